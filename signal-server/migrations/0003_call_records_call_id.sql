-- Schema version 3: call records are looked up by call id, so a repeated end report (a switch
-- re-sending what it queued while its cloud link was down) is recognised and not written twice.
CREATE INDEX call_records_call_id ON call_records(call_id);
