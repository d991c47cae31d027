WITH "t16" AS NOT MATERIALIZED (
  SELECT
    COALESCE("t3"."person_key", "t13"."stored_key") AS "person",
    "t13"."value",
    "t13"."timestamp",
    "t13"."message_id"
  FROM (
    SELECT
      "t6"."value",
      "t6"."timestamp",
      "t6"."message_id",
      "t6"."person_key" AS "stored_key"
    FROM (
      SELECT
        *
      FROM "trait_updates" AS "t2"
      WHERE
        "t2"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
        AND "t2"."key" IN ('city')
    ) AS "t6"
  ) AS "t13"
  LEFT OUTER JOIN "one_id_aliases" AS "t3"
    ON "t13"."stored_key" = "t3"."alias_key"
), "t22" AS (
  SELECT
    *
  FROM (
    SELECT
      "t20"."person",
      ARG_MAX_NULL(
        "t20"."value",
        CREATE_SORT_KEY("t20"."timestamp", 'ASC NULLS LAST', "t20"."message_id", 'ASC NULLS LAST')
      ) AS "t0"
    FROM (
      SELECT
        *
      FROM "t16" AS "t17"
      WHERE
        "t17"."person" IN (
          SELECT
            "t18"."person"
          FROM (
            SELECT
              *
            FROM "t16" AS "t17"
            WHERE
              COALESCE("t17"."value" = 'Beijing', FALSE)
          ) AS "t18"
        )
    ) AS "t20"
    GROUP BY
      1
  ) AS "t21"
  WHERE
    COALESCE("t21"."t0" = 'Beijing', FALSE)
), "t25" AS NOT MATERIALIZED (
  SELECT
    "t23"."person"
  FROM "t22" AS "t23"
)
SELECT
  "k"."one_id"
FROM (
  SELECT
    "t38"."person" AS "person_key"
  FROM (
    SELECT
      *
    FROM (
      SELECT
        "t24"."person",
        "t24"."t0",
        "t36"."e1",
        "t36"."e2",
        "t36"."e3"
      FROM "t22" AS "t24"
      LEFT OUTER JOIN (
        SELECT
          "t34"."person" AS "k_events",
          "t34"."e1",
          "t34"."e2",
          "t34"."e3"
        FROM (
          SELECT
            "t33"."person",
            COUNT(*) FILTER(WHERE
              "t33"."row_set" = 0) AS "e1",
            COUNT(*) FILTER(WHERE
              "t33"."row_set" = 1) AS "e2",
            COUNT(*) FILTER(WHERE
              "t33"."row_set" = 2) AS "e3"
          FROM (
            SELECT
              "t32"."owner" AS "person",
              "t15"."row_set"
            FROM (
              SELECT
                *
              FROM (
                SELECT
                  *
                FROM (
                  SELECT
                    "t5"."person_key" AS "stored_key",
                    0 AS "row_set"
                  FROM (
                    SELECT
                      *
                    FROM "events" AS "t1"
                    WHERE
                      "t1"."event" = 'Application Opened'
                      AND "t1"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                      AND "t1"."timestamp" >= CAST('2026-08-03 09:00:00.000000' AS TIMESTAMP)
                  ) AS "t5"
                ) AS "t9"
                UNION ALL
                SELECT
                  *
                FROM (
                  SELECT
                    "t4"."person_key" AS "stored_key",
                    1 AS "row_set"
                  FROM (
                    SELECT
                      *
                    FROM "events" AS "t1"
                    WHERE
                      "t1"."event" = 'Order Completed'
                      AND "t1"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                  ) AS "t4"
                ) AS "t8"
              ) AS "t11"
              UNION ALL
              SELECT
                *
              FROM (
                SELECT
                  "t7"."person_key" AS "stored_key",
                  2 AS "row_set"
                FROM (
                  SELECT
                    *
                  FROM "events" AS "t1"
                  WHERE
                    "t1"."event" = 'Order Completed'
                    AND "t1"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                    AND "t1"."timestamp" >= CAST('2026-10-25 09:00:00.000000' AS TIMESTAMP)
                    AND COALESCE(ARRAY_CONTAINS("t1"."product_brands", 'Shiseido'), FALSE)
                ) AS "t7"
              ) AS "t12"
            ) AS "t15"
            INNER JOIN (
              SELECT
                *
              FROM (
                SELECT
                  "t26"."person" AS "raw",
                  "t26"."person" AS "owner"
                FROM "t25" AS "t26"
              ) AS "t27"
              UNION ALL
              SELECT
                *
              FROM (
                SELECT
                  "t29"."alias_key" AS "raw",
                  "t29"."person_key" AS "owner"
                FROM (
                  SELECT
                    *
                  FROM "one_id_aliases" AS "t0"
                  WHERE
                    "t0"."person_key" IN (
                      SELECT
                        *
                      FROM "t25" AS "t26"
                    )
                    AND "t0"."alias_key" IS NOT NULL
                ) AS "t29"
              ) AS "t30"
            ) AS "t32"
              ON "t15"."stored_key" = "t32"."raw"
          ) AS "t33"
          GROUP BY
            1
        ) AS "t34"
      ) AS "t36"
        ON "t24"."person" = "t36"."k_events"
    ) AS "t37"
    WHERE
      COALESCE("t37"."t0" = 'Beijing', FALSE)
      AND COALESCE(COALESCE("t37"."e1", 0) >= 3.0, FALSE)
      AND COALESCE(COALESCE("t37"."e2", 0) >= 1.0, FALSE)
      AND COALESCE("t37"."e3", 0) = 0
      AND "t37"."person" IS NOT NULL
  ) AS "t38"
) AS "m"
INNER JOIN "person_keys" AS "k"
  ON "m"."person_key" = "k"."person_key"
