-- The runs in the table, one row per (run_date, model), oldest first: rows, distinct users,
-- popularity_fill_users (users whose list ends with entries of the popularity fill,
-- popularity_filled > 0; with today's job these are the users served entirely by the
-- popularity fallback, popularity_filled = k) and the mean history size (reads only the small
-- columns).
-- tables: recommendations
SELECT
  run_date,
  model,
  COUNT(*) AS row_count,
  COUNT(DISTINCT user_id) AS users,
  COUNTIF(popularity_filled > 0) AS popularity_fill_users,
  AVG(history_size) AS mean_history_size
FROM {{recommendations}}
GROUP BY run_date, model
ORDER BY run_date, model
