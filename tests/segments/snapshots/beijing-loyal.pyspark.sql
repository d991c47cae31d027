WITH `t12` AS (
  SELECT
    COALESCE(`t3`.`person_key`, `t8`.`stored_key`) AS `person`,
    `t8`.`key`,
    `t8`.`value`,
    `t8`.`number`,
    `t8`.`timestamp`,
    `t8`.`message_id`
  FROM (
    SELECT
      `t1`.`key`,
      `t1`.`value`,
      `t1`.`number`,
      `t1`.`timestamp`,
      `t1`.`message_id`,
      `t1`.`person_key` AS `stored_key`
    FROM `trait_updates` AS `t1`
    WHERE
      `t1`.`timestamp` <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
      AND `t1`.`key` IN ('city')
  ) AS `t8`
  LEFT OUTER JOIN `one_id_aliases` AS `t3`
    ON `t8`.`stored_key` = `t3`.`alias_key`
), `t16` AS (
  SELECT
    `t15`.`person`,
    MAX_BY(
      IF(`t15`.`key` = 'city', `t15`.`value`, NULL),
      IF(
        `t15`.`key` = 'city',
        STRUCT(`t15`.`timestamp` AS `t`, `t15`.`message_id` AS `m`),
        NULL
      )
    ) AS `t0`
  FROM (
    SELECT
      *
    FROM `t12` AS `t13`
    WHERE
      `t13`.`person` IN (
        SELECT
          `t13`.`person`
        FROM `t12` AS `t13`
        WHERE
          `t13`.`key` = 'city' AND COALESCE(`t13`.`value` = 'Beijing', FALSE)
      )
  ) AS `t15`
  GROUP BY
    1
)
SELECT
  `k`.`one_id`
FROM (
  SELECT
    `t30`.`person` AS `person_key`
  FROM (
    SELECT
      `t21`.`person`,
      `t21`.`t0`,
      `t29`.`e1`,
      `t29`.`e2`,
      `t29`.`e3`
    FROM (
      SELECT
        *
      FROM `t16` AS `t17`
      WHERE
        COALESCE(`t17`.`t0` = 'Beijing', FALSE)
    ) AS `t21`
    LEFT OUTER JOIN (
      SELECT
        `t27`.`person` AS `k_events`,
        `t27`.`e1`,
        `t27`.`e2`,
        `t27`.`e3`
      FROM (
        SELECT
          `t26`.`person`,
          SUM(CAST(`t26`.`row_set` = 0 AS BIGINT)) AS `e1`,
          SUM(CAST(`t26`.`row_set` = 1 AS BIGINT)) AS `e2`,
          SUM(CAST(`t26`.`row_set` = 2 AS BIGINT)) AS `e3`
        FROM (
          SELECT
            `t25`.`owner` AS `person`,
            `t11`.`row_set`
          FROM (
            SELECT
              *
            FROM (
              SELECT
                *
              FROM (
                SELECT
                  `t0`.`person_key` AS `stored_key`,
                  0 AS `row_set`
                FROM `events` AS `t0`
                WHERE
                  `t0`.`event` = 'Application Opened'
                  AND `t0`.`timestamp` <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                  AND `t0`.`timestamp` >= CAST('2026-08-03 09:00:00.000000' AS TIMESTAMP)
              ) AS `t5`
              UNION ALL
              SELECT
                *
              FROM (
                SELECT
                  `t0`.`person_key` AS `stored_key`,
                  1 AS `row_set`
                FROM `events` AS `t0`
                WHERE
                  `t0`.`event` = 'Order Completed'
                  AND `t0`.`timestamp` <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
              ) AS `t4`
            ) AS `t7`
            UNION ALL
            SELECT
              *
            FROM (
              SELECT
                `t0`.`person_key` AS `stored_key`,
                2 AS `row_set`
              FROM `events` AS `t0`
              WHERE
                `t0`.`event` = 'Order Completed'
                AND `t0`.`timestamp` <= CAST('2026-11-01 09:00:00.000000' AS TIMESTAMP)
                AND `t0`.`timestamp` >= CAST('2026-10-25 09:00:00.000000' AS TIMESTAMP)
                AND COALESCE(
                  IF(
                    TRANSFORM(`t0`.`products`, __ibis_param_p__ -> __ibis_param_p__.`brand`) IS NULL,
                    NULL,
                    COALESCE(
                      ARRAY_CONTAINS(
                        TRANSFORM(`t0`.`products`, __ibis_param_p__ -> __ibis_param_p__.`brand`),
                        'Shiseido'
                      ),
                      FALSE
                    )
                  ),
                  FALSE
                )
            ) AS `t9`
          ) AS `t11`
          INNER JOIN (
            SELECT
              *
            FROM (
              SELECT
                `t17`.`person` AS `raw`,
                `t17`.`person` AS `owner`
              FROM `t16` AS `t17`
              WHERE
                COALESCE(`t17`.`t0` = 'Beijing', FALSE)
            ) AS `t19`
            UNION ALL
            SELECT
              *
            FROM (
              SELECT
                `t22`.`alias_key` AS `raw`,
                `t22`.`person_key` AS `owner`
              FROM (
                SELECT
                  *
                FROM `one_id_aliases` AS `t2`
                WHERE
                  `t2`.`person_key` IN (
                    SELECT
                      `t17`.`person`
                    FROM `t16` AS `t17`
                    WHERE
                      COALESCE(`t17`.`t0` = 'Beijing', FALSE)
                  )
                  AND `t2`.`alias_key` IS NOT NULL
              ) AS `t22`
            ) AS `t23`
          ) AS `t25`
            ON `t11`.`stored_key` = `t25`.`raw`
        ) AS `t26`
        GROUP BY
          1
      ) AS `t27`
    ) AS `t29`
      ON `t21`.`person` = `t29`.`k_events`
  ) AS `t30`
  WHERE
    COALESCE(`t30`.`t0` = 'Beijing', FALSE)
    AND COALESCE(COALESCE(`t30`.`e1`, 0) >= 3.0, FALSE)
    AND COALESCE(COALESCE(`t30`.`e2`, 0) >= 1.0, FALSE)
    AND COALESCE(`t30`.`e3`, 0) = 0
    AND `t30`.`person` IS NOT NULL
) AS `m`
INNER JOIN `person_keys` AS `k`
  ON `m`.`person_key` = `k`.`person_key`
