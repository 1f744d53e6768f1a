-- Data-quality checks of one run of one model (one (run_date, model) partition), one row per
-- check: failing_users (rows or users that fail), an example_user_id, and passed. Checks:
-- run_not_empty (also catches a misspelt model); one_row_per_user; exactly_k (every list holds
-- k entries); distinct_songs (no song id twice in a list; a NULL song id fails);
-- distinct_tracks (no track id twice in a list, among the non-NULL ones: a collaborative
-- model may give no track id); ranks_1_to_n (ranks are exactly 1..list length);
-- popularity_filled_in_range (0 <= popularity_filled <= list length); and, when a listens
-- table is given, no_listened_song (no song the user listened to is recommended; passed is
-- NULL when there is no listens table to check against).
-- param run_date DATE: the run (partition) to check
-- param model STRING: the model whose rows to check (e.g. timbre_cosine, itemcf)
-- param k INT64 = 500: the expected list length
-- tables: recommendations
-- optional tables: listens
WITH run AS (
  SELECT user_id, popularity_filled, recommendations
  FROM {{recommendations}}
  WHERE run_date = @run_date
    AND model = @model
),
per_row AS (
  SELECT
    t.user_id,
    ARRAY_LENGTH(t.recommendations) AS entries,
    t.popularity_filled,
    (SELECT COUNT(DISTINCT r.song_id) FROM UNNEST(t.recommendations) AS r) AS distinct_songs,
    (SELECT COUNT(r.track_id) FROM UNNEST(t.recommendations) AS r) AS tracks,
    (SELECT COUNT(DISTINCT r.track_id) FROM UNNEST(t.recommendations) AS r) AS distinct_tracks,
    (SELECT COUNT(DISTINCT r.rank) FROM UNNEST(t.recommendations) AS r) AS distinct_ranks,
    (SELECT MIN(r.rank) FROM UNNEST(t.recommendations) AS r) AS min_rank,
    (SELECT MAX(r.rank) FROM UNNEST(t.recommendations) AS r) AS max_rank
  FROM run AS t
),
repeated_users AS (
  SELECT user_id
  FROM run
  GROUP BY user_id
  HAVING COUNT(*) > 1
),
listened_recommended AS (
  SELECT t.user_id
  FROM run AS t
  CROSS JOIN UNNEST(t.recommendations) AS r
  JOIN {{listens}} AS l ON l.user_id = t.user_id AND l.song_id = r.song_id
  GROUP BY t.user_id
),
-- COALESCE(COUNTIF(…), 0): over no rows BigQuery's COUNTIF gives 0 but DuckDB's NULL.
checks AS (
  SELECT 1 AS position, 'run_not_empty' AS check_name,
         IF(COUNT(*) = 0, 1, 0) AS failing_users, CAST(NULL AS STRING) AS example_user_id
  FROM run
  UNION ALL
  SELECT 2, 'one_row_per_user', COUNT(*), MIN(user_id)
  FROM repeated_users
  UNION ALL
  SELECT 3, 'exactly_k', COALESCE(COUNTIF(entries != @k), 0),
         MIN(IF(entries != @k, user_id, NULL))
  FROM per_row
  UNION ALL
  SELECT 4, 'distinct_songs', COALESCE(COUNTIF(distinct_songs != entries), 0),
         MIN(IF(distinct_songs != entries, user_id, NULL))
  FROM per_row
  UNION ALL
  SELECT 5, 'distinct_tracks', COALESCE(COUNTIF(distinct_tracks != tracks), 0),
         MIN(IF(distinct_tracks != tracks, user_id, NULL))
  FROM per_row
  UNION ALL
  SELECT 6, 'ranks_1_to_n',
         COALESCE(COUNTIF(entries > 0 AND NOT (distinct_ranks = entries AND min_rank = 1
                                               AND max_rank = entries)), 0),
         MIN(IF(entries > 0 AND NOT (distinct_ranks = entries AND min_rank = 1
                                     AND max_rank = entries), user_id, NULL))
  FROM per_row
  UNION ALL
  SELECT 7, 'popularity_filled_in_range',
         COALESCE(COUNTIF(NOT COALESCE(popularity_filled BETWEEN 0 AND entries, FALSE)), 0),
         MIN(IF(COALESCE(popularity_filled BETWEEN 0 AND entries, FALSE), NULL, user_id))
  FROM per_row
  UNION ALL
  SELECT 8, 'no_listened_song', IF(@has_listens, COUNT(*), NULL),
         IF(@has_listens, MIN(user_id), NULL)
  FROM listened_recommended
)
SELECT
  check_name,
  failing_users,
  example_user_id,
  failing_users = 0 AS passed,
  (SELECT COUNT(DISTINCT user_id) FROM run) AS users
FROM checks
ORDER BY position
