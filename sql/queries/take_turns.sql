-- Records which lanes a claim served, in the order it served them last, so that the next
-- claim deals free slots to the lanes served longest ago first (round-robin between the
-- campaigns of one priority). Run in the claim's transaction, under the claim lock.
--   $1 lanes, in the order served
INSERT INTO dispatch_turns AS t (lane, turn)
SELECT lane, nextval('dispatch_turn')
FROM UNNEST($1::uuid[]) WITH ORDINALITY AS served (lane, ord)
ORDER BY ord
ON CONFLICT (lane) DO UPDATE SET turn = excluded.turn
