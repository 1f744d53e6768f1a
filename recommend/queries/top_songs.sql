-- The most-recommended songs of one model's run: in how many users' first top_n ranks each
-- song appears, the share of the run's users that is, and its mean rank there. Counted by
-- song id (a collaborative model may give no track id); track_id is the smallest track id the
-- run gave the song (NULL when it gave none). Artist, title and year: that track's in the songs
-- table, or the song's first track's there.
-- param run_date DATE: the run (partition) to read
-- param model STRING: the model whose rows to read (e.g. timbre_cosine, itemcf)
-- param top_n INT64 = 10: count a song when it is within a user's first top_n ranks
-- param limit INT64 = 20: how many songs to list
-- tables: recommendations, songs
WITH run_users AS (
  SELECT COUNT(DISTINCT user_id) AS users
  FROM {{recommendations}}
  WHERE run_date = @run_date
    AND model = @model
),
counts AS (
  SELECT
    r.song_id,
    MIN(r.track_id) AS track_id,
    COUNT(*) AS times_recommended,
    AVG(r.rank) AS mean_rank
  FROM {{recommendations}} AS t
  CROSS JOIN UNNEST(t.recommendations) AS r
  WHERE t.run_date = @run_date
    AND t.model = @model
    AND r.rank <= @top_n
  GROUP BY r.song_id
),
song_first_track AS (
  SELECT song_id, artist_name, title, year
  FROM (
    SELECT song_id, artist_name, title, year,
           ROW_NUMBER() OVER (PARTITION BY song_id ORDER BY track_id) AS position
    FROM {{songs}}
  )
  WHERE position = 1
)
SELECT
  c.song_id,
  c.track_id,
  IF(s.track_id IS NOT NULL, s.artist_name, f.artist_name) AS artist_name,
  IF(s.track_id IS NOT NULL, s.title, f.title) AS title,
  NULLIF(IF(s.track_id IS NOT NULL, s.year, f.year), 0) AS year,
  c.times_recommended,
  SAFE_DIVIDE(c.times_recommended, u.users) AS share_of_users,
  c.mean_rank
FROM counts AS c
CROSS JOIN run_users AS u
LEFT JOIN {{songs}} AS s ON s.track_id = c.track_id
LEFT JOIN song_first_track AS f ON f.song_id = c.song_id
ORDER BY c.times_recommended DESC, c.song_id
LIMIT @limit
