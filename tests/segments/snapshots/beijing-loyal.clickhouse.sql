WITH "t12" AS (
  SELECT
    COALESCE("t3"."person_key", "t7"."stored_key") AS "person",
    "t7"."value" AS "value",
    "t7"."timestamp" AS "timestamp",
    "t7"."message_id" AS "message_id"
  FROM (
    SELECT
      "t0"."value" AS "value",
      "t0"."timestamp" AS "timestamp",
      "t0"."message_id" AS "message_id",
      "t0"."person_key" AS "stored_key"
    FROM "trait_updates" AS "t0"
    WHERE
      "t0"."timestamp" <= toDateTime64('2026-11-01 09:00:00.000000', 6, 'UTC')
      AND "t0"."key" IN ('city')
  ) AS "t7"
  LEFT OUTER JOIN "one_id_aliases" AS "t3"
    ON "t7"."stored_key" = "t3"."alias_key"
), "t17" AS (
  SELECT
    *
  FROM (
    SELECT
      "t15"."person" AS "person",
      argMax(tuple("t15"."value"), tuple("t15"."timestamp", "t15"."message_id")).1 AS "t0"
    FROM (
      SELECT
        *
      FROM "t12" AS "t13"
      WHERE
        CAST("t13"."person" IN (
          SELECT
            "t13"."person" AS "person"
          FROM "t12" AS "t13"
          WHERE
            COALESCE("t13"."value" = 'Beijing', FALSE)
        ) AS Nullable(Bool))
    ) AS "t15"
    GROUP BY
      "t15"."person"
  ) AS "t16"
  WHERE
    COALESCE("t16"."t0" = 'Beijing', FALSE)
), "t20" AS (
  SELECT
    "t18"."person" AS "person"
  FROM "t17" AS "t18"
)
SELECT
  "k"."one_id"
FROM (
  SELECT
    "t29"."person" AS "person_key"
  FROM (
    SELECT
      "t19"."person" AS "person",
      "t19"."t0" AS "t0",
      "t28"."e1" AS "e1",
      "t28"."e2" AS "e2",
      "t28"."e3" AS "e3"
    FROM "t17" AS "t19"
    LEFT OUTER JOIN (
      SELECT
        "t26"."person" AS "person",
        countIf("t26"."row_set" = 0) AS "e1",
        countIf("t26"."row_set" = 1) AS "e2",
        countIf("t26"."row_set" = 2) AS "e3"
      FROM (
        SELECT
          "t25"."owner" AS "person",
          "t11"."row_set" AS "row_set"
        FROM (
          SELECT
            *
          FROM (
            SELECT
              *
            FROM (
              SELECT
                "t2"."person_key" AS "stored_key",
                0 AS "row_set"
              FROM "events" AS "t2"
              WHERE
                "t2"."event" = 'Application Opened'
                AND "t2"."timestamp" <= toDateTime64('2026-11-01 09:00:00.000000', 6, 'UTC')
                AND "t2"."timestamp" >= toDateTime64('2026-08-03 09:00:00.000000', 6, 'UTC')
            ) AS "t6"
            UNION ALL
            SELECT
              *
            FROM (
              SELECT
                "t2"."person_key" AS "stored_key",
                1 AS "row_set"
              FROM "events" AS "t2"
              WHERE
                "t2"."event" = 'Order Completed'
                AND "t2"."timestamp" <= toDateTime64('2026-11-01 09:00:00.000000', 6, 'UTC')
            ) AS "t5"
          ) AS "t8"
          UNION ALL
          SELECT
            *
          FROM (
            SELECT
              "t2"."person_key" AS "stored_key",
              2 AS "row_set"
            FROM "events" AS "t2"
            WHERE
              "t2"."event" = 'Order Completed'
              AND "t2"."timestamp" <= toDateTime64('2026-11-01 09:00:00.000000', 6, 'UTC')
              AND "t2"."timestamp" >= toDateTime64('2026-10-25 09:00:00.000000', 6, 'UTC')
              AND COALESCE(has("t2"."product_brands", 'Shiseido'), FALSE)
          ) AS "t9"
        ) AS "t11"
        INNER JOIN (
          SELECT
            *
          FROM (
            SELECT
              "t21"."person" AS "raw",
              "t21"."person" AS "owner"
            FROM "t20" AS "t21"
          ) AS "t22"
          UNION ALL
          SELECT
            *
          FROM (
            SELECT
              "t1"."alias_key" AS "raw",
              "t1"."person_key" AS "owner"
            FROM "one_id_aliases" AS "t1"
            WHERE
              CAST("t1"."person_key" IN (
                SELECT
                  *
                FROM "t20"
              ) AS Nullable(Bool))
              AND isNotNull("t1"."alias_key")
          ) AS "t23"
        ) AS "t25"
          ON "t11"."stored_key" = "t25"."raw"
      ) AS "t26"
      GROUP BY
        "t26"."person"
    ) AS "t28"
      ON "t19"."person" = "t28"."person"
  ) AS "t29"
  WHERE
    COALESCE("t29"."t0" = 'Beijing', FALSE)
    AND COALESCE(COALESCE("t29"."e1", 0) >= 3, FALSE)
    AND COALESCE(COALESCE("t29"."e2", 0) >= 1, FALSE)
    AND COALESCE("t29"."e3", 0) = 0
) AS "m"
INNER JOIN "person_keys" AS "k"
  ON "m"."person_key" = "k"."person_key"
