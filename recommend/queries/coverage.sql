-- Catalogue coverage and concentration of one model's run, counted by song (a collaborative
-- model may give no track id). coverage: share of the catalogue's songs (the distinct song ids
-- of the songs table) recommended to at least one user within top_n. gini: Gini coefficient of
-- the recommendation counts over the catalogue's songs, never-recommended songs counting 0
-- (0 = every song recommended equally often, near 1 = a few songs get everything).
-- recommended_outside_catalogue: distinct recommended songs missing from the songs table.
-- param run_date DATE: the run (partition) to read
-- param model STRING: the model whose rows to read (e.g. timbre_cosine, itemcf)
-- param top_n INT64 = 500: count ranks 1..top_n
-- tables: recommendations, songs
WITH catalogue AS (
  SELECT DISTINCT song_id
  FROM {{songs}}
),
run_users AS (
  SELECT COUNT(DISTINCT user_id) AS users
  FROM {{recommendations}}
  WHERE run_date = @run_date
    AND model = @model
),
counts AS (
  SELECT r.song_id, COUNT(*) AS recommendations
  FROM {{recommendations}} AS t
  CROSS JOIN UNNEST(t.recommendations) AS r
  WHERE t.run_date = @run_date
    AND t.model = @model
    AND r.rank <= @top_n
  GROUP BY r.song_id
),
outside AS (
  SELECT COUNT(*) AS songs
  FROM counts AS n
  LEFT JOIN catalogue AS c ON c.song_id = n.song_id
  WHERE c.song_id IS NULL
),
per_song AS (
  SELECT
    COALESCE(n.recommendations, 0) AS recommendations,
    ROW_NUMBER() OVER (ORDER BY COALESCE(n.recommendations, 0), c.song_id) AS position
  FROM catalogue AS c
  LEFT JOIN counts AS n ON n.song_id = c.song_id
),
summary AS (
  SELECT
    COUNT(*) AS catalogue_songs,
    -- over no rows BigQuery's COUNTIF gives 0 but DuckDB's NULL
    COALESCE(COUNTIF(recommendations > 0), 0) AS recommended_songs,
    SUM(recommendations) AS recommendations_in_catalogue,
    SUM(CAST(position AS FLOAT64) * recommendations) AS weighted_sum
  FROM per_song
)
SELECT
  u.users,
  s.catalogue_songs,
  s.recommended_songs,
  SAFE_DIVIDE(s.recommended_songs, s.catalogue_songs) AS coverage,
  IF(COALESCE(s.recommendations_in_catalogue, 0) = 0, 0.0,
     2 * s.weighted_sum / (s.catalogue_songs * s.recommendations_in_catalogue)
       - (s.catalogue_songs + 1) / s.catalogue_songs) AS gini,
  COALESCE(s.recommendations_in_catalogue, 0) AS recommendations_in_catalogue,
  o.songs AS recommended_outside_catalogue
FROM summary AS s
CROSS JOIN run_users AS u
CROSS JOIN outside AS o
