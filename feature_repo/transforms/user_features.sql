-- User features as of each time in `as_of_times`: one row per user per as-of time.
--
-- Only events strictly before the as-of time count (`e.event_ts < a.as_of_ts`), so a row stamped
-- `event_timestamp = T` never carries information from T or later, and Feast's point-in-time join
-- (feature row time <= label time) cannot leak the future into a training row.
--
-- Inputs (views the runner prepares over the lake):
--   events(event_id, user_id, video_id, event_ts, event_type, watch_time_s, rating, device, ...)
--   videos(video_id, genres, duration_s, published_ts, ...)   users(user_id, signup_ts, ...)
--   video_genres(video_id, genre)                             as_of_times(as_of_ts)
-- One SELECT, engine-neutral: it runs unchanged on DuckDB and Spark SQL (>= 3.4). `unix_seconds`
-- and `array_join` are Spark built-ins; the DuckDB runner defines them as macros.
-- Averages and ratios use integer literals: Spark types `1.0` as DECIMAL and would average it as
-- one (5 decimals); integers average and divide as DOUBLE in both engines.
--
-- Definitions:
--   activity          every event of the user except `impression` (a system log, not an action)
--   events_{1,7,30}d  activity in [as_of - N days, as_of)
--   watched           play, watch or rating (a MovieLens rating means the film was watched)
--   avg_completion    mean of min(watch_time_s / duration_s, 1) over events with a watch time
--                     and a known duration
--   like_ratio        likes / (likes + dislikes); NULL when the user has neither
--   top_genres        the 3 genres with the largest share of the user's activity on videos
--                     (dislikes excluded), as 'Genre:share|Genre:share|...' (ties by name)
--   share_<daypart>   share of activity by UTC hour: night [0,6), morning [6,12),
--                     afternoon [12,18), evening [18,24)
--   share_<device>    share of activity per device (the rest is `unknown`)
--   last_video_ids    the 10 most recently watched distinct videos, newest first, '|'-joined
-- Users enter at signup (or first event); numeric features of users without activity are NULL
-- except counts (0).
WITH
hist AS (
  SELECT a.as_of_ts, e.event_id, e.user_id, e.video_id, e.event_ts, e.event_type,
         e.watch_time_s, e.rating, e.device
  FROM as_of_times a
  JOIN events e ON e.event_ts < a.as_of_ts
  WHERE e.event_type <> 'impression'
),
base AS (
  SELECT a.as_of_ts, u.user_id
  FROM as_of_times a
  JOIN users u ON u.signup_ts < a.as_of_ts
  UNION
  SELECT as_of_ts, user_id FROM hist
),
agg AS (
  SELECT
    h.as_of_ts,
    h.user_id,
    SUM(CASE WHEN h.event_ts >= h.as_of_ts - INTERVAL 1 DAYS THEN 1 ELSE 0 END) AS events_1d,
    SUM(CASE WHEN h.event_ts >= h.as_of_ts - INTERVAL 7 DAYS THEN 1 ELSE 0 END) AS events_7d,
    SUM(CASE WHEN h.event_ts >= h.as_of_ts - INTERVAL 30 DAYS THEN 1 ELSE 0 END) AS events_30d,
    COUNT(*) AS events_total,
    SUM(CASE WHEN h.event_type = 'rating' AND h.rating IS NOT NULL THEN 1 ELSE 0 END) AS ratings_count,
    AVG(CASE WHEN h.event_type = 'rating' THEN h.rating END) AS avg_rating,
    SUM(CASE WHEN h.event_type = 'like' THEN 1 ELSE 0 END) AS likes,
    SUM(CASE WHEN h.event_type = 'dislike' THEN 1 ELSE 0 END) AS dislikes,
    AVG(CASE WHEN h.watch_time_s IS NOT NULL AND v.duration_s > 0
             THEN LEAST(h.watch_time_s / v.duration_s, 1.0) END) AS avg_completion,
    MAX(h.event_ts) AS last_event_ts,
    AVG(CASE WHEN hour(h.event_ts) < 6 THEN 1 ELSE 0 END) AS share_night,
    AVG(CASE WHEN hour(h.event_ts) >= 6 AND hour(h.event_ts) < 12 THEN 1 ELSE 0 END) AS share_morning,
    AVG(CASE WHEN hour(h.event_ts) >= 12 AND hour(h.event_ts) < 18 THEN 1 ELSE 0 END) AS share_afternoon,
    AVG(CASE WHEN hour(h.event_ts) >= 18 THEN 1 ELSE 0 END) AS share_evening,
    AVG(CASE WHEN h.device = 'mobile' THEN 1 ELSE 0 END) AS share_mobile,
    AVG(CASE WHEN h.device = 'desktop' THEN 1 ELSE 0 END) AS share_desktop,
    AVG(CASE WHEN h.device = 'tv' THEN 1 ELSE 0 END) AS share_tv,
    AVG(CASE WHEN h.device = 'tablet' THEN 1 ELSE 0 END) AS share_tablet
  FROM hist h
  LEFT JOIN videos v ON v.video_id = h.video_id
  GROUP BY h.as_of_ts, h.user_id
),
genre_counts AS (
  SELECT h.as_of_ts, h.user_id, g.genre, COUNT(*) AS n
  FROM hist h
  JOIN video_genres g ON g.video_id = h.video_id
  WHERE h.event_type <> 'dislike'
  GROUP BY h.as_of_ts, h.user_id, g.genre
),
genre_ranked AS (
  SELECT as_of_ts, user_id, genre,
    CAST(n AS DOUBLE) / SUM(n) OVER (PARTITION BY as_of_ts, user_id) AS share,
    ROW_NUMBER() OVER (PARTITION BY as_of_ts, user_id ORDER BY n DESC, genre) AS rn
  FROM genre_counts
),
top_genres AS (
  SELECT as_of_ts, user_id,
    concat_ws('|',
      MAX(CASE WHEN rn = 1 THEN concat(genre, ':', CAST(round(share, 3) AS STRING)) END),
      MAX(CASE WHEN rn = 2 THEN concat(genre, ':', CAST(round(share, 3) AS STRING)) END),
      MAX(CASE WHEN rn = 3 THEN concat(genre, ':', CAST(round(share, 3) AS STRING)) END)
    ) AS top_genres
  FROM genre_ranked
  WHERE rn <= 3
  GROUP BY as_of_ts, user_id
),
watched AS (
  SELECT as_of_ts, user_id, video_id, MAX(event_ts) AS last_ts
  FROM hist
  WHERE event_type IN ('play', 'watch', 'rating') AND video_id IS NOT NULL
  GROUP BY as_of_ts, user_id, video_id
),
watched_ranked AS (
  SELECT as_of_ts, user_id, video_id,
    ROW_NUMBER() OVER (PARTITION BY as_of_ts, user_id ORDER BY last_ts DESC, video_id DESC) AS rn
  FROM watched
),
last_watched AS (
  SELECT as_of_ts, user_id,
    concat_ws('|',
      MAX(CASE WHEN rn = 1 THEN video_id END), MAX(CASE WHEN rn = 2 THEN video_id END),
      MAX(CASE WHEN rn = 3 THEN video_id END), MAX(CASE WHEN rn = 4 THEN video_id END),
      MAX(CASE WHEN rn = 5 THEN video_id END), MAX(CASE WHEN rn = 6 THEN video_id END),
      MAX(CASE WHEN rn = 7 THEN video_id END), MAX(CASE WHEN rn = 8 THEN video_id END),
      MAX(CASE WHEN rn = 9 THEN video_id END), MAX(CASE WHEN rn = 10 THEN video_id END)
    ) AS last_video_ids
  FROM watched_ranked
  WHERE rn <= 10
  GROUP BY as_of_ts, user_id
)
SELECT
  b.user_id,
  b.as_of_ts AS event_timestamp,
  b.as_of_ts AS created_ts,
  CAST(COALESCE(a.events_1d, 0) AS BIGINT) AS events_1d,
  CAST(COALESCE(a.events_7d, 0) AS BIGINT) AS events_7d,
  CAST(COALESCE(a.events_30d, 0) AS BIGINT) AS events_30d,
  CAST(COALESCE(a.events_total, 0) AS BIGINT) AS events_total,
  CAST(COALESCE(a.ratings_count, 0) AS BIGINT) AS ratings_count,
  CAST(a.avg_rating AS DOUBLE) AS avg_rating,
  CAST(a.likes AS DOUBLE) / NULLIF(a.likes + a.dislikes, 0) AS like_ratio,
  CAST(a.avg_completion AS DOUBLE) AS avg_completion,
  COALESCE(t.top_genres, '') AS top_genres,
  CAST(unix_seconds(b.as_of_ts) - unix_seconds(a.last_event_ts) AS DOUBLE) / 86400.0 AS days_since_last_activity,
  CAST(a.share_night AS DOUBLE) AS share_night,
  CAST(a.share_morning AS DOUBLE) AS share_morning,
  CAST(a.share_afternoon AS DOUBLE) AS share_afternoon,
  CAST(a.share_evening AS DOUBLE) AS share_evening,
  CAST(a.share_mobile AS DOUBLE) AS share_mobile,
  CAST(a.share_desktop AS DOUBLE) AS share_desktop,
  CAST(a.share_tv AS DOUBLE) AS share_tv,
  CAST(a.share_tablet AS DOUBLE) AS share_tablet,
  COALESCE(l.last_video_ids, '') AS last_video_ids
FROM base b
LEFT JOIN agg a ON a.as_of_ts = b.as_of_ts AND a.user_id = b.user_id
LEFT JOIN top_genres t ON t.as_of_ts = b.as_of_ts AND t.user_id = b.user_id
LEFT JOIN last_watched l ON l.as_of_ts = b.as_of_ts AND l.user_id = b.user_id
