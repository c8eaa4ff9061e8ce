-- How many connections each daemon may open to PostgreSQL (its pools'
-- sizes: queries, max_tasks + 2 lock connections, the listener; 0 on
-- SQLite). A daemon starting on a shared database adds the live ones' to
-- its own and refuses to start when the sum is over the server's
-- max_connections (less the connections reserved for superusers).
ALTER TABLE daemons ADD COLUMN connections BIGINT NOT NULL DEFAULT 0;
