SELECT
  "t15"."person_id" AS "one_id"
FROM (
  SELECT
    "t11"."person_id",
    "t11"."t0",
    "t14"."e1",
    "t14"."e2",
    "t14"."e3"
  FROM (
    SELECT
      "t8"."person_id",
      CASE
        WHEN COUNT(*) FILTER(WHERE
          "t8"."key" = 'city') > 0
        THEN FIRST("t8"."value" ORDER BY "t8"."timestamp" DESC) FILTER(WHERE
          "t8"."key" = 'city')
        ELSE CAST(NULL AS TEXT)
      END AS "t0"
    FROM (
      SELECT
        COALESCE("t3"."one_id", "t6"."one_id") AS "person_id",
        "t6"."key",
        "t6"."value",
        "t6"."number",
        "t6"."timestamp"
      FROM (
        SELECT
          *
        FROM "trait_updates" AS "t0"
        WHERE
          "t0"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
          AND "t0"."key" IN ('city')
      ) AS "t6"
      LEFT OUTER JOIN "one_id_aliases" AS "t3"
        ON "t6"."one_id" = "t3"."alias"
    ) AS "t8"
    GROUP BY
      1
  ) AS "t11"
  LEFT OUTER JOIN (
    SELECT
      "t12"."person_id" AS "k_events",
      "t12"."e1",
      "t12"."e2",
      "t12"."e3"
    FROM (
      SELECT
        "t9"."person_id",
        COUNT(*) FILTER(WHERE
          (
            "t9"."event" = 'Application Opened'
          )
          AND (
            "t9"."timestamp" >= CAST('2026-08-03 09:00:00.000000' AS TIMESTAMP)
          )) AS "e1",
        COUNT(*) FILTER(WHERE
          "t9"."event" = 'Order Completed') AS "e2",
        COUNT(*) FILTER(WHERE
          (
            "t9"."event" = 'Order Completed'
          )
          AND (
            "t9"."timestamp" >= CAST('2026-10-25 09:00:00.000000' AS TIMESTAMP)
          )
          AND COALESCE(
            LIST_BOOL_OR(
              LIST_APPLY(
                "t9"."products",
                LAMBDA __ibis_param_p__ : COALESCE((
                  __ibis_param_p__
                )."brand" = 'Shiseido', FALSE)
              )
            ),
            FALSE
          )) AS "e3"
      FROM (
        SELECT
          COALESCE("t3"."one_id", "t7"."one_id") AS "person_id",
          "t7"."event",
          "t7"."products",
          "t7"."timestamp"
        FROM (
          SELECT
            *
          FROM "events" AS "t2"
          WHERE
            "t2"."timestamp" <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
            AND "t2"."event" IN ('Application Opened', 'Order Completed')
        ) AS "t7"
        LEFT OUTER JOIN "one_id_aliases" AS "t3"
          ON "t7"."one_id" = "t3"."alias"
      ) AS "t9"
      GROUP BY
        1
    ) AS "t12"
  ) AS "t14"
    ON "t11"."person_id" = "t14"."k_events"
) AS "t15"
WHERE
  COALESCE("t15"."t0" = 'Beijing', FALSE)
  AND COALESCE(COALESCE("t15"."e1", 0) >= 3.0, FALSE)
  AND COALESCE(COALESCE("t15"."e2", 0) >= 1.0, FALSE)
  AND COALESCE("t15"."e3", 0) = 0
