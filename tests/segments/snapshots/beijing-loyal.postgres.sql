WITH "t12" AS (
  SELECT
    "t10"."person_id",
    CASE
      WHEN COUNT(*) FILTER(WHERE
        "t10"."key" = 'city') > 0
      THEN (
        ARRAY_AGG("t10"."value" ORDER BY "t10"."timestamp" DESC NULLS LAST) FILTER(WHERE
          "t10"."timestamp" IS NOT NULL AND "t10"."key" = 'city')
      )[1]
      ELSE CAST(NULL AS VARCHAR)
    END AS "t0"
  FROM (
    SELECT
      COALESCE("t3"."one_id", "t7"."one_id") AS "person_id",
      "t7"."key",
      "t7"."value",
      "t7"."number",
      "t7"."timestamp"
    FROM (
      SELECT
        *
      FROM "trait_updates" AS "t0"
      WHERE
        "t0"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
        AND "t0"."key" IN ('city')
    ) AS "t7"
    LEFT OUTER JOIN "one_id_aliases" AS "t3"
      ON "t7"."one_id" = "t3"."alias"
  ) AS "t10"
  GROUP BY
    1
), "t15" AS (
  SELECT
    "t13"."person_id"
  FROM "t12" AS "t13"
  WHERE
    COALESCE("t13"."t0" = 'Beijing', FALSE)
)
SELECT
  "t30"."person_id" AS "one_id"
FROM (
  SELECT
    "t17"."person_id",
    "t17"."t0",
    "t29"."e1",
    "t29"."e2",
    "t29"."e3"
  FROM (
    SELECT
      *
    FROM "t12" AS "t13"
    WHERE
      COALESCE("t13"."t0" = 'Beijing', FALSE)
  ) AS "t17"
  LEFT OUTER JOIN (
    SELECT
      "t27"."person_id" AS "k_events",
      "t27"."e1",
      "t27"."e2",
      "t27"."e3"
    FROM (
      SELECT
        "t26"."person_id",
        COUNT(*) FILTER(WHERE
          "t26"."row_set" = 0) AS "e1",
        COUNT(*) FILTER(WHERE
          "t26"."row_set" = 1) AS "e2",
        COUNT(*) FILTER(WHERE
          "t26"."row_set" = 2) AS "e3"
      FROM (
        SELECT
          *
        FROM (
          SELECT
            COALESCE("t3"."one_id", "t24"."one_id") AS "person_id",
            "t24"."timestamp",
            "t24"."row_set"
          FROM (
            SELECT
              *
            FROM (
              SELECT
                *
              FROM (
                SELECT
                  *
                FROM (
                  SELECT
                    "t2"."one_id",
                    "t2"."timestamp",
                    0 AS "row_set"
                  FROM "events" AS "t2"
                  WHERE
                    "t2"."event" = 'Application Opened'
                    AND "t2"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                    AND "t2"."timestamp" >= CAST('2026-08-03 09:00:00.000000' AS TIMESTAMP)
                ) AS "t6"
                UNION ALL
                SELECT
                  *
                FROM (
                  SELECT
                    "t2"."one_id",
                    "t2"."timestamp",
                    1 AS "row_set"
                  FROM "events" AS "t2"
                  WHERE
                    "t2"."event" = 'Order Completed'
                    AND "t2"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                ) AS "t5"
              ) AS "t8"
              UNION ALL
              SELECT
                *
              FROM (
                SELECT
                  "t2"."one_id",
                  "t2"."timestamp",
                  2 AS "row_set"
                FROM "events" AS "t2"
                WHERE
                  "t2"."event" = 'Order Completed'
                  AND "t2"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                  AND "t2"."timestamp" >= CAST('2026-10-25 09:00:00.000000' AS TIMESTAMP)
                  AND COALESCE(
                    (
                      SELECT
                        BOOL_OR(ibis_pg_arr_bool_or_X)
                      FROM UNNEST(ARRAY(SELECT
                        COALESCE((
                          __ibis_param_p__
                        )."brand" = 'Shiseido', FALSE)
                      FROM UNNEST("t2"."products") AS __ibis_param_p__)) AS _t0(ibis_pg_arr_bool_or_X)
                    ),
                    FALSE
                  )
              ) AS "t9"
            ) AS "t11"
            WHERE
              "t11"."one_id" IN (
                SELECT
                  *
                FROM (
                  SELECT
                    *
                  FROM (
                    SELECT
                      "t13"."person_id" AS "raw"
                    FROM "t12" AS "t13"
                    WHERE
                      COALESCE("t13"."t0" = 'Beijing', FALSE)
                  ) AS "t16"
                  UNION ALL
                  SELECT
                    *
                  FROM (
                    SELECT
                      CAST("t19"."alias" AS VARCHAR) AS "raw"
                    FROM (
                      SELECT
                        *
                      FROM "one_id_aliases" AS "t1"
                      WHERE
                        "t1"."one_id" IN (
                          SELECT
                            *
                          FROM "t15"
                        )
                    ) AS "t19"
                  ) AS "t20"
                ) AS "t21"
              )
          ) AS "t24"
          LEFT OUTER JOIN "one_id_aliases" AS "t3"
            ON "t24"."one_id" = "t3"."alias"
        ) AS "t25"
        WHERE
          "t25"."person_id" IN (
            SELECT
              *
            FROM "t15"
          )
      ) AS "t26"
      GROUP BY
        1
    ) AS "t27"
  ) AS "t29"
    ON "t17"."person_id" = "t29"."k_events"
) AS "t30"
WHERE
  COALESCE("t30"."t0" = 'Beijing', FALSE)
  AND COALESCE(COALESCE("t30"."e1", 0) >= 3.0, FALSE)
  AND COALESCE(COALESCE("t30"."e2", 0) >= 1.0, FALSE)
  AND COALESCE("t30"."e3", 0) = 0
