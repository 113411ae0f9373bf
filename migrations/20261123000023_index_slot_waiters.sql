-- The line of actions waiting for a concurrency slot of their integration
-- (`slot_wait_since`), read each time an action of the integration leaves
-- RUNNING. Without it the wake-up read every PENDING action of the
-- integration (16.9 ms per outcome batch with 20,000 queued; BENCHMARKS.md);
-- with it, the first waiter is one index probe and an integration with no
-- waiters costs nothing.
CREATE INDEX ticket_actions_slot_waiters_idx ON ticket_actions (integration_id, slot_wait_since)
    WHERE status = 'PENDING' AND slot_wait_since IS NOT NULL;
