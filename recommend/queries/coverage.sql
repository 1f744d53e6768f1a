-- Catalogue coverage and concentration of a run. coverage: share of the catalogue's tracks
-- (the songs table) recommended to at least one user within top_n. gini: Gini coefficient of
-- the recommendation counts over the catalogue, never-recommended tracks counting 0
-- (0 = every track recommended equally often, near 1 = a few tracks get everything).
-- recommended_outside_catalogue: distinct recommended tracks missing from the songs table.
-- param run_date DATE: the run (partition) to read
-- param top_n INT64 = 500: count ranks 1..top_n
-- tables: recommendations, songs
WITH catalogue AS (
  SELECT DISTINCT track_id
  FROM {{songs}}
),
run_users AS (
  SELECT COUNT(DISTINCT user_id) AS users
  FROM {{recommendations}}
  WHERE run_date = @run_date
),
counts AS (
  SELECT r.track_id, COUNT(*) AS recommendations
  FROM {{recommendations}} AS t
  CROSS JOIN UNNEST(t.recommendations) AS r
  WHERE t.run_date = @run_date
    AND r.rank <= @top_n
  GROUP BY r.track_id
),
outside AS (
  SELECT COUNT(*) AS tracks
  FROM counts AS n
  LEFT JOIN catalogue AS c ON c.track_id = n.track_id
  WHERE c.track_id IS NULL
),
per_track AS (
  SELECT
    COALESCE(n.recommendations, 0) AS recommendations,
    ROW_NUMBER() OVER (ORDER BY COALESCE(n.recommendations, 0), c.track_id) AS position
  FROM catalogue AS c
  LEFT JOIN counts AS n ON n.track_id = c.track_id
),
summary AS (
  SELECT
    COUNT(*) AS catalogue_tracks,
    -- over no rows BigQuery's COUNTIF gives 0 but DuckDB's NULL
    COALESCE(COUNTIF(recommendations > 0), 0) AS recommended_tracks,
    SUM(recommendations) AS recommendations_in_catalogue,
    SUM(CAST(position AS FLOAT64) * recommendations) AS weighted_sum
  FROM per_track
)
SELECT
  u.users,
  s.catalogue_tracks,
  s.recommended_tracks,
  SAFE_DIVIDE(s.recommended_tracks, s.catalogue_tracks) AS coverage,
  IF(COALESCE(s.recommendations_in_catalogue, 0) = 0, 0.0,
     2 * s.weighted_sum / (s.catalogue_tracks * s.recommendations_in_catalogue)
       - (s.catalogue_tracks + 1) / s.catalogue_tracks) AS gini,
  COALESCE(s.recommendations_in_catalogue, 0) AS recommendations_in_catalogue,
  o.tracks AS recommended_outside_catalogue
FROM summary AS s
CROSS JOIN run_users AS u
CROSS JOIN outside AS o
