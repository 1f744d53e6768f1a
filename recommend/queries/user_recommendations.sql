-- One user's recommendations in one run, best first, with artist, title and year from the
-- songs table (year NULL when unknown). Songs missing from the songs table still show.
-- param run_date DATE: the run (partition) to read
-- param user_id STRING: the user
-- param top_n INT64 = 10: show ranks 1..top_n
-- tables: recommendations, songs
SELECT
  t.user_id,
  t.model,
  t.history_size,
  r.rank,
  r.song_id,
  r.track_id,
  s.artist_name,
  s.title,
  NULLIF(s.year, 0) AS year,
  r.score
FROM {{recommendations}} AS t
CROSS JOIN UNNEST(t.recommendations) AS r
LEFT JOIN {{songs}} AS s ON s.track_id = r.track_id
WHERE t.run_date = @run_date
  AND t.user_id = @user_id
  AND r.rank <= @top_n
ORDER BY r.rank, r.track_id
