-- Video features as of each time in `as_of_times`: one row per video per as-of time.
--
-- Only events strictly before the as-of time count (`e.event_ts < a.as_of_ts`); see
-- user_features.sql for the inputs and the portability rules (DuckDB and Spark SQL >= 3.4).
--
-- Definitions:
--   a view            a play, watch or rating event (a MovieLens rating means the film was watched)
--   views_{1,7,30}d   distinct viewers in [as_of - N days, as_of): a user who plays, watches and
--                     rates a video counts once, whatever the source logs
--   views_prev_7d     distinct viewers in [as_of - 14 days, as_of - 7 days)
--   views_total       distinct viewers before as_of
--   trending_score    ln((1 + views_7d) / (1 + views_prev_7d)): 0 when flat, > 0 when rising
--   completion_rate   mean of min(watch_time_s / duration_s, 1) over events with a watch time
--   like_ratio        likes / (likes + dislikes); NULL when neither
--   avg_rating        mean rating; NULL when unrated
--   age_days          days from published_ts to as_of; NULL when unknown
--   genres            the video's genres, '|'-joined
-- Videos enter at publication (always when the date is unknown) or at their first event.
WITH
hist AS (
  SELECT a.as_of_ts, e.user_id, e.video_id, e.event_ts, e.event_type, e.watch_time_s, e.rating
  FROM as_of_times a
  JOIN events e ON e.event_ts < a.as_of_ts
  WHERE e.video_id IS NOT NULL AND e.event_type <> 'impression'
),
base AS (
  SELECT a.as_of_ts, v.video_id
  FROM as_of_times a
  JOIN videos v ON v.published_ts IS NULL OR v.published_ts < a.as_of_ts
  UNION
  SELECT as_of_ts, video_id FROM hist
),
agg AS (
  SELECT
    h.as_of_ts,
    h.video_id,
    COUNT(DISTINCT CASE WHEN h.event_type IN ('play', 'watch', 'rating')
                         AND h.event_ts >= h.as_of_ts - INTERVAL 1 DAYS THEN h.user_id END) AS views_1d,
    COUNT(DISTINCT CASE WHEN h.event_type IN ('play', 'watch', 'rating')
                         AND h.event_ts >= h.as_of_ts - INTERVAL 7 DAYS THEN h.user_id END) AS views_7d,
    COUNT(DISTINCT CASE WHEN h.event_type IN ('play', 'watch', 'rating')
                         AND h.event_ts >= h.as_of_ts - INTERVAL 30 DAYS THEN h.user_id END) AS views_30d,
    COUNT(DISTINCT CASE WHEN h.event_type IN ('play', 'watch', 'rating')
                         AND h.event_ts >= h.as_of_ts - INTERVAL 14 DAYS
                         AND h.event_ts < h.as_of_ts - INTERVAL 7 DAYS THEN h.user_id END) AS views_prev_7d,
    COUNT(DISTINCT CASE WHEN h.event_type IN ('play', 'watch', 'rating') THEN h.user_id END) AS views_total,
    AVG(CASE WHEN h.watch_time_s IS NOT NULL AND v.duration_s > 0
             THEN LEAST(h.watch_time_s / v.duration_s, 1.0) END) AS completion_rate,
    SUM(CASE WHEN h.event_type = 'like' THEN 1 ELSE 0 END) AS likes,
    SUM(CASE WHEN h.event_type = 'dislike' THEN 1 ELSE 0 END) AS dislikes,
    SUM(CASE WHEN h.event_type = 'rating' AND h.rating IS NOT NULL THEN 1 ELSE 0 END) AS ratings_count,
    AVG(CASE WHEN h.event_type = 'rating' THEN h.rating END) AS avg_rating
  FROM hist h
  LEFT JOIN videos v ON v.video_id = h.video_id
  GROUP BY h.as_of_ts, h.video_id
)
SELECT
  b.video_id,
  b.as_of_ts AS event_timestamp,
  b.as_of_ts AS created_ts,
  CAST(COALESCE(a.views_1d, 0) AS BIGINT) AS views_1d,
  CAST(COALESCE(a.views_7d, 0) AS BIGINT) AS views_7d,
  CAST(COALESCE(a.views_30d, 0) AS BIGINT) AS views_30d,
  CAST(COALESCE(a.views_prev_7d, 0) AS BIGINT) AS views_prev_7d,
  CAST(COALESCE(a.views_total, 0) AS BIGINT) AS views_total,
  ln((1 + COALESCE(a.views_7d, 0)) / (1 + COALESCE(a.views_prev_7d, 0))) AS trending_score,
  CAST(a.completion_rate AS DOUBLE) AS completion_rate,
  CAST(a.likes AS DOUBLE) / NULLIF(a.likes + a.dislikes, 0) AS like_ratio,
  CAST(a.avg_rating AS DOUBLE) AS avg_rating,
  CAST(COALESCE(a.ratings_count, 0) AS BIGINT) AS ratings_count,
  CAST(unix_seconds(b.as_of_ts) - unix_seconds(v.published_ts) AS DOUBLE) / 86400.0 AS age_days,
  CAST(v.duration_s AS DOUBLE) AS duration_s,
  COALESCE(array_join(v.genres, '|'), '') AS genres
FROM base b
LEFT JOIN agg a ON a.as_of_ts = b.as_of_ts AND a.video_id = b.video_id
LEFT JOIN videos v ON v.video_id = b.video_id
