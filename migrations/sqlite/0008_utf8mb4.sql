-- SQLite stores UTF-8 and compares TEXT byte for byte already; this
-- migration keeps the numbering in step with MySQL's 0008 (utf8mb4).
SELECT 1;
