-- One user's recommendations from one model's run, best first, with artist, title and year
-- from the songs table (year NULL when unknown): those of the recommended track, or, when the
-- track id is NULL or not in the songs table, of the song's first track there (by track id).
-- Songs missing from the songs table still show. from_popularity: the entry comes from the
-- popularity fill (the list's last popularity_filled entries).
-- param run_date DATE: the run (partition) to read
-- param model STRING: the model whose rows to read (e.g. timbre_cosine, itemcf)
-- param user_id STRING: the user
-- param top_n INT64 = 10: show ranks 1..top_n
-- tables: recommendations, songs
WITH song_first_track AS (
  SELECT song_id, artist_name, title, year
  FROM (
    SELECT song_id, artist_name, title, year,
           ROW_NUMBER() OVER (PARTITION BY song_id ORDER BY track_id) AS position
    FROM {{songs}}
  )
  WHERE position = 1
)
SELECT
  t.user_id,
  t.model,
  t.history_size,
  r.rank,
  r.song_id,
  r.track_id,
  IF(s.track_id IS NOT NULL, s.artist_name, f.artist_name) AS artist_name,
  IF(s.track_id IS NOT NULL, s.title, f.title) AS title,
  NULLIF(IF(s.track_id IS NOT NULL, s.year, f.year), 0) AS year,
  r.score,
  r.rank > ARRAY_LENGTH(t.recommendations) - t.popularity_filled AS from_popularity
FROM {{recommendations}} AS t
CROSS JOIN UNNEST(t.recommendations) AS r
LEFT JOIN {{songs}} AS s ON s.track_id = r.track_id
LEFT JOIN song_first_track AS f ON f.song_id = r.song_id
WHERE t.run_date = @run_date
  AND t.model = @model
  AND t.user_id = @user_id
  AND r.rank <= @top_n
ORDER BY r.rank, r.song_id
