-- Users whose top_n changed between two runs of one model, and by how much; only users present
-- in both runs are compared, and songs are compared by song id (track ids may be NULL). Per
-- user: songs_entered (songs in the new top_n that were not in the old), songs_left,
-- songs_kept, songs_moved (kept songs at another rank), jaccard (kept / union) and
-- mean_rank_shift (mean |rank change| of the kept songs). Every row also carries
-- users_compared and users_changed, the totals before the limit.
-- param run_date DATE: the newer run
-- param previous_run_date DATE: the run to compare with
-- param model STRING: the model whose two runs to compare (e.g. timbre_cosine, itemcf)
-- param top_n INT64 = 10: compare ranks 1..top_n
-- param limit INT64 = 100: how many changed users to list (most changed first)
-- tables: recommendations
WITH current_top AS (
  SELECT t.user_id, r.song_id, r.rank
  FROM {{recommendations}} AS t
  CROSS JOIN UNNEST(t.recommendations) AS r
  WHERE t.run_date = @run_date
    AND t.model = @model
    AND r.rank <= @top_n
),
previous_top AS (
  SELECT t.user_id, r.song_id, r.rank
  FROM {{recommendations}} AS t
  CROSS JOIN UNNEST(t.recommendations) AS r
  WHERE t.run_date = @previous_run_date
    AND t.model = @model
    AND r.rank <= @top_n
),
both_runs AS (
  SELECT user_id FROM {{recommendations}} WHERE run_date = @run_date AND model = @model
  INTERSECT DISTINCT
  SELECT user_id FROM {{recommendations}}
  WHERE run_date = @previous_run_date AND model = @model
),
compared AS (
  SELECT COUNT(*) AS users FROM both_runs
),
paired AS (
  SELECT
    COALESCE(c.user_id, p.user_id) AS user_id,
    c.rank AS current_rank,
    p.rank AS previous_rank
  FROM current_top AS c
  FULL OUTER JOIN previous_top AS p
    ON c.user_id = p.user_id AND c.song_id = p.song_id
),
per_user AS (
  SELECT
    b.user_id,
    COUNTIF(x.current_rank IS NOT NULL AND x.previous_rank IS NULL) AS songs_entered,
    COUNTIF(x.current_rank IS NULL AND x.previous_rank IS NOT NULL) AS songs_left,
    COUNTIF(x.current_rank IS NOT NULL AND x.previous_rank IS NOT NULL) AS songs_kept,
    COUNTIF(x.current_rank IS NOT NULL AND x.previous_rank IS NOT NULL
            AND x.current_rank != x.previous_rank) AS songs_moved,
    AVG(IF(x.current_rank IS NOT NULL AND x.previous_rank IS NOT NULL,
           ABS(x.current_rank - x.previous_rank), NULL)) AS mean_rank_shift
  FROM both_runs AS b
  JOIN paired AS x ON x.user_id = b.user_id
  GROUP BY b.user_id
),
changed AS (
  SELECT *, COUNT(*) OVER () AS users_changed
  FROM per_user
  WHERE songs_entered > 0 OR songs_left > 0 OR songs_moved > 0
)
SELECT
  ch.user_id,
  ch.songs_entered,
  ch.songs_left,
  ch.songs_kept,
  ch.songs_moved,
  SAFE_DIVIDE(ch.songs_kept, ch.songs_kept + ch.songs_entered + ch.songs_left) AS jaccard,
  ch.mean_rank_shift,
  cmp.users AS users_compared,
  ch.users_changed
FROM changed AS ch
CROSS JOIN compared AS cmp
ORDER BY ch.songs_entered DESC, ch.songs_moved DESC, ch.user_id
LIMIT @limit
