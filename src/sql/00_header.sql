-- audit_db install script, generated from src/sql/*.sql (one file per concern,
-- concatenated in name order by the Makefile). Edit those files, not the result.

\echo Use "CREATE EXTENSION audit_db" to load this file. \quit
