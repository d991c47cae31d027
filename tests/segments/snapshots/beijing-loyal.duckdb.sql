WITH "t9" AS (
  SELECT
    "t6"."person_id",
    CASE
      WHEN COUNT(*) FILTER(WHERE
        "t6"."key" = 'city') > 0
      THEN FIRST("t6"."value" ORDER BY "t6"."timestamp" DESC) FILTER(WHERE
        "t6"."key" = 'city')
      ELSE CAST(NULL AS TEXT)
    END AS "t0"
  FROM (
    SELECT
      COALESCE("t3"."one_id", "t5"."one_id") AS "person_id",
      "t5"."key",
      "t5"."value",
      "t5"."number",
      "t5"."timestamp"
    FROM (
      SELECT
        *
      FROM "trait_updates" AS "t0"
      WHERE
        "t0"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
        AND "t0"."key" IN ('city')
    ) AS "t5"
    LEFT OUTER JOIN "one_id_aliases" AS "t3"
      ON "t5"."one_id" = "t3"."alias"
  ) AS "t6"
  GROUP BY
    1
)
SELECT
  "t19"."person_id" AS "one_id"
FROM (
  SELECT
    "t14"."person_id",
    "t14"."t0",
    "t18"."e1",
    "t18"."e2",
    "t18"."e3"
  FROM (
    SELECT
      *
    FROM "t9" AS "t11"
    WHERE
      COALESCE("t11"."t0" = 'Beijing', FALSE)
  ) AS "t14"
  LEFT OUTER JOIN (
    SELECT
      "t16"."person_id" AS "k_events",
      "t16"."e1",
      "t16"."e2",
      "t16"."e3"
    FROM (
      SELECT
        "t15"."person_id",
        COUNT(*) FILTER(WHERE
          (
            "t15"."event" = 'Application Opened'
          )
          AND (
            "t15"."timestamp" >= CAST('2026-08-03 09:00:00.000000' AS TIMESTAMP)
          )) AS "e1",
        COUNT(*) FILTER(WHERE
          "t15"."event" = 'Order Completed') AS "e2",
        COUNT(*) FILTER(WHERE
          (
            "t15"."event" = 'Order Completed'
          )
          AND (
            "t15"."timestamp" >= CAST('2026-10-25 09:00:00.000000' AS TIMESTAMP)
          )
          AND COALESCE(
            LIST_BOOL_OR(
              LIST_APPLY(
                "t15"."products",
                LAMBDA __ibis_param_p__ : COALESCE((
                  __ibis_param_p__
                )."brand" = 'Shiseido', FALSE)
              )
            ),
            FALSE
          )) AS "e3"
      FROM (
        SELECT
          *
        FROM (
          SELECT
            COALESCE("t3"."one_id", "t8"."one_id") AS "person_id",
            "t8"."event",
            "t8"."products",
            "t8"."timestamp"
          FROM (
            SELECT
              *
            FROM "events" AS "t2"
            WHERE
              "t2"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
              AND (
                (
                  (
                    "t2"."event" = 'Application Opened'
                  )
                  AND (
                    "t2"."timestamp" >= CAST('2026-08-03 09:00:00.000000' AS TIMESTAMP)
                  )
                )
                OR (
                  "t2"."event" = 'Order Completed'
                )
                OR (
                  (
                    "t2"."event" = 'Order Completed'
                  )
                  AND (
                    "t2"."timestamp" >= CAST('2026-10-25 09:00:00.000000' AS TIMESTAMP)
                  )
                  AND COALESCE(
                    LIST_BOOL_OR(
                      LIST_APPLY(
                        "t2"."products",
                        LAMBDA __ibis_param_p__ : COALESCE((
                          __ibis_param_p__
                        )."brand" = 'Shiseido', FALSE)
                      )
                    ),
                    FALSE
                  )
                )
              )
          ) AS "t8"
          LEFT OUTER JOIN "one_id_aliases" AS "t3"
            ON "t8"."one_id" = "t3"."alias"
        ) AS "t10"
        WHERE
          "t10"."person_id" IN (
            SELECT
              "t11"."person_id"
            FROM "t9" AS "t11"
            WHERE
              COALESCE("t11"."t0" = 'Beijing', FALSE)
          )
      ) AS "t15"
      GROUP BY
        1
    ) AS "t16"
  ) AS "t18"
    ON "t14"."person_id" = "t18"."k_events"
) AS "t19"
WHERE
  COALESCE("t19"."t0" = 'Beijing', FALSE)
  AND COALESCE(COALESCE("t19"."e1", 0) >= 3.0, FALSE)
  AND COALESCE(COALESCE("t19"."e2", 0) >= 1.0, FALSE)
  AND COALESCE("t19"."e3", 0) = 0
