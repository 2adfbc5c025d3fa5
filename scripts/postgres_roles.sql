-- Roles for a dpgov ledger on PostgreSQL (docs/ledger.md, "Roles on PostgreSQL").
--
--   owner    owns the dpgov_* tables and their triggers. Used once, to create them (run any
--            dpgov command as this role against an empty schema), and for migrations. Nobody
--            runs dpgov day to day with it: the owner can disable the append-only triggers.
--   app      what dpgov runs as (training, the gate, the CLI): reads everything, appends
--            entries, keeps the projections. It may not UPDATE, DELETE or TRUNCATE an entry,
--            nor alter, disable or drop a trigger (only the owner may).
--   auditor  reads everything, writes nothing (dpgov audit, dpgov ledger verify).
--
-- The roles must exist (CREATE ROLE ... LOGIN, with their passwords, by a DBA); this script only
-- grants and revokes. Run it as the owner or a superuser, after the tables were created, and
-- again whenever a dpgov upgrade adds a dpgov_* table:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v schema=public \
--        -v owner=dpgov_owner -v app=dpgov_app -v auditor=dpgov_auditor \
--        -f scripts/postgres_roles.sql

-- Nobody else may use the schema or the tables; the owner keeps the tables.
REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM PUBLIC;
SELECT format('ALTER TABLE %I.%I OWNER TO %I', schemaname, tablename, :'owner')
  FROM pg_tables WHERE schemaname = :'schema' AND tablename LIKE 'dpgov\_%'
\gexec
GRANT USAGE ON SCHEMA :"schema" TO :"app", :"auditor";

-- The ledger itself: read and append, nothing else.
REVOKE ALL ON :"schema".dpgov_entries FROM :"app", :"auditor";
GRANT SELECT, INSERT ON :"schema".dpgov_entries TO :"app";
GRANT SELECT ON :"schema".dpgov_entries TO :"auditor";

-- The projections and the composition cache (derived from the entries, checked against them):
-- the application keeps them up to date; TRUNCATE is never granted.
SELECT format('REVOKE ALL ON %I.%I FROM %I, %I', schemaname, tablename, :'app', :'auditor'),
       format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I',
              schemaname, tablename, :'app'),
       format('GRANT SELECT ON %I.%I TO %I', schemaname, tablename, :'auditor')
  FROM pg_tables
 WHERE schemaname = :'schema' AND tablename LIKE 'dpgov\_%' AND tablename <> 'dpgov_entries'
\gexec

-- The append-only function runs as its caller; only the owner may replace it.
SELECT format('ALTER FUNCTION %I.dpgov_entries_append_only() OWNER TO %I', :'schema', :'owner')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proname = 'dpgov_entries_append_only' AND n.nspname = :'schema'
\gexec
