-- The most-recommended songs of a run: in how many users' first top_n ranks each track
-- appears, the share of the run's users that is, and its mean rank there.
-- param run_date DATE: the run (partition) to read
-- param top_n INT64 = 10: count a track when it is within a user's first top_n ranks
-- param limit INT64 = 20: how many tracks to list
-- tables: recommendations, songs
WITH run_users AS (
  SELECT COUNT(DISTINCT user_id) AS users
  FROM {{recommendations}}
  WHERE run_date = @run_date
),
counts AS (
  SELECT
    r.track_id,
    MIN(r.song_id) AS song_id,
    COUNT(*) AS times_recommended,
    AVG(r.rank) AS mean_rank
  FROM {{recommendations}} AS t
  CROSS JOIN UNNEST(t.recommendations) AS r
  WHERE t.run_date = @run_date
    AND r.rank <= @top_n
  GROUP BY r.track_id
)
SELECT
  c.track_id,
  c.song_id,
  s.artist_name,
  s.title,
  NULLIF(s.year, 0) AS year,
  c.times_recommended,
  SAFE_DIVIDE(c.times_recommended, u.users) AS share_of_users,
  c.mean_rank
FROM counts AS c
CROSS JOIN run_users AS u
LEFT JOIN {{songs}} AS s ON s.track_id = c.track_id
ORDER BY c.times_recommended DESC, c.track_id
LIMIT @limit
