-- Tickets and their queue jobs are written in one transaction, which runs as
-- txdx_app; it needs to insert into (and, for retries and cancellation,
-- update) apalis-postgres's job table. apalis's migrations run first.
GRANT USAGE ON SCHEMA apalis TO txdx_app;
GRANT SELECT, INSERT, UPDATE ON apalis.jobs TO txdx_app;
