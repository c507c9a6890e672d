-- The check of the timeline's kinds, added NOT VALID with WAITING, is validated: a read of
-- call_events that holds no writer off (SHARE UPDATE EXCLUSIVE).
ALTER TABLE call_events VALIDATE CONSTRAINT call_events_kind_check;
