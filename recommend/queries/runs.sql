-- The runs in the table, oldest first: rows, distinct users, the model names used and the
-- mean history size of each run_date (reads only the small columns).
-- tables: recommendations
SELECT
  run_date,
  COUNT(*) AS row_count,
  COUNT(DISTINCT user_id) AS users,
  STRING_AGG(DISTINCT model, ',' ORDER BY model) AS models,
  AVG(history_size) AS mean_history_size
FROM {{recommendations}}
GROUP BY run_date
ORDER BY run_date
