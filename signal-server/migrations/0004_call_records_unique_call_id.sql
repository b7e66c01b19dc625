-- Schema version 4: first writer wins on call id through a UNIQUE index and
-- `ON CONFLICT (call_id) DO NOTHING` instead of a `NOT EXISTS` subquery per insert (the index
-- probe is the same; the subquery around the VALUES was most of a record write's CPU).
-- Databases written before version 3 may hold repeated call ids: the first row (lowest id) stays.
DELETE FROM call_records WHERE id NOT IN (SELECT MIN(id) FROM call_records GROUP BY call_id);
DROP INDEX call_records_call_id;
CREATE UNIQUE INDEX call_records_call_id ON call_records(call_id);
