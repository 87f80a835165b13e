# Makefile for audit_db (PGXS).
#
#   make                      build the shared library and the install script
#   make install              install into the PostgreSQL found by pg_config
#   make installcheck         run the pg_regress suites in sql/ against a running server
#
# The install script audit_db--<version>.sql is generated from src/sql/*.sql
# (one file per concern, concatenated in name order); released versions'
# scripts are frozen in src/sql/released/, upgrades in src/sql/upgrade/.

EXTENSION   = audit_db
EXTVERSION  = $(shell sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" $(EXTENSION).control)

MODULE_big  = audit_db
OBJS        = src/audit_db.o \
              src/audit_log_columns.o \
              src/hashing.o \
              src/row_stamping.o \
              src/immutability.o \
              src/event_api.o \
              src/event_writer.o \
              src/vocabulary.o \
              src/partitions.o \
              src/partition_manager.o \
              src/maintenance.o \
              src/retention.o \
              src/archive.o \
              src/sealing.o \
              src/verification.o \
              src/tenancy.o \
              src/organization_roles.o \
              src/pseudonyms.o \
              src/redaction.o \
              src/config_changes.o \
              src/change_tracking.o \
              src/restore.o \
              src/worker.o

# -Wextra, less two warnings PostgreSQL's own sources do not build with:
# unused parameters (callback signatures fixed by the server) and signed /
# unsigned comparisons (raised inside server macros such as ARR_DATA_PTR).
PG_CFLAGS   = -Wextra -Wno-unused-parameter -Wno-sign-compare

DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
# Released versions' install scripts (frozen) and the upgrade scripts between
# versions: CREATE EXTENSION audit_db VERSION '0.1' + ALTER EXTENSION UPDATE
# must give what a fresh CREATE EXTENSION gives (test/upgrade.py checks it).
DATA        = $(wildcard src/sql/released/$(EXTENSION)--*.sql) \
              $(wildcard src/sql/upgrade/$(EXTENSION)--*--*.sql)

REGRESS     = install audit_log hashing immutability presets privileges chain partitions retention archive tenancy gdpr alerts reports health change_tracking restore
REGRESS_OPTS = --inputdir=. --outputdir=results_dir

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK  = -lcrypto
EXTRA_CLEAN = results_dir

PG_CONFIG  ?= pg_config
PGXS       := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(EXTENSION)--$(EXTVERSION).sql: $(sort $(wildcard src/sql/[0-9]*.sql)) $(EXTENSION).control
	cat $(sort $(wildcard src/sql/[0-9]*.sql)) > $@
