#!/usr/bin/python3
"""test/gdpr.py: GDPR pseudonymization, export and erasure on a realistic
log, checked from outside the database with independent code.

In the test database (PGDATABASE; the extension is re-created there), with
LOGIN roles made for the test (gdpr_test_*; dropped first if a previous run
left them, and at the end even on failure): a privacy officer (member of
audit_db_privacy_officer), an application writer and a role with no grant.
The log holds 5 events for each of 300 patients (patient-0000 ...) in two
organizations, acting and acted upon, named in descriptions and in details
(keys, nested strings, arrays), with FINANCIAL rows among them.

  1. pseudonymize one patient with each strategy (hash, token, encryption)
     as the officer: the rows that named the patient (found here with a
     Python whole-token regex over a snapshot) now name the pseudonym and
     never the patient, every other row is byte-for-byte unchanged, every
     leaf hash is unchanged, the returned count is right; the hash
     strategy returns the same pseudonym again (0 rows) and differs per
     patient; audit.verify() is clean after sealing. audit.original_id()
     reverses token and encryption pseudonyms for the officer (the
     encryption one only with its key), refuses the writer and the
     no-grant role (42501), and every successful lookup is one more
     gdpr.original_id event naming the pseudonym and the officer.
  2. export a patient some of whose rows are pseudonymized and some not:
     the json, csv and xml documents parse with Python's json, csv and
     xml.etree and hold exactly the rows the regex finds for the patient or
     the pseudonym, each with chain_status 'sealed' after sealing.
  3. erase a patient (hash-pseudonymized before, with more raw rows since):
     the erased and kept counts match the rows the regex finds (kept =
     FINANCIAL and the gdpr.* records), FINANCIAL rows keep their details,
     the chain verifies. A brute-force search over the 10,000 likely ids
     patient-0000 ... patient-9999 (named as a whole token, SHA-256 of the
     guess, keyed pseudonym and lookup digest recomputed with the
     database's own HMAC key in every scope, as a superuser could) does not
     confirm the erased id, neither from what is left for its rows (their
     columns, attestations, the erasure's record) nor from every row of
     every table of the extension (the mapping's originals decrypted with
     its key); before the erasure the same search over those rows does
     confirm it, and afterwards it still confirms a patient who was only
     pseudonymized (the search works). The destroyed salts appear nowhere
     in the extension's tables.
  4. tools/audit_db_verify accepts audit.export_chain() with the digest
     after all of it, and reports a redacted row's personal fields edited
     in the export and a redaction record dropped from it.
Connects through the libpq environment as a superuser; the test roles
connect the same way with their own names. Runs in about 10 s.
"""
import csv
import hashlib
import hmac
import io
import json
import os
import re
import struct
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg, q, q1, seal_all, sqlstate_of, wait_worker_maintenance  # noqa: E402

pg = psycopg()
R = Results()
ROLES = ("gdpr_test_officer", "gdpr_test_writer", "gdpr_test_nobody")
PATIENTS = 300
KEY = "a passphrase that is long enough"
COLUMNS = ("id", "principal_id", "organization_id", "action", "target_resource_type", "target_resource_id",
           "outcome_description", "details", "data_classification", "hash", "personal_data_salt",
           "personal_data_commitment")


def connect(user=None):
    kw = {"autocommit": True}
    if user:
        kw["user"] = user
    return pg.connect(**kw)


def token_re(ident):
    """Whole-token match, as docs/gdpr.md defines it (independent of the C code)."""
    word = r"[A-Za-z0-9_\u0080-\U0010ffff]"
    left = "(?<!%s)" % word if re.match(word, ident[0]) else ""
    right = "(?!%s)" % word if re.match(word, ident[-1]) else ""
    return re.compile(left + re.escape(ident) + right)


def json_strings(v):
    """Every key and string value of a JSON document."""
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from json_strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from json_strings(x)


def mentions(row, idents):
    """Whether the row names one of the identifiers in a personal field."""
    pats = [token_re(i) for i in idents]
    fields = [row["principal_id"], row["target_resource_id"], row["outcome_description"]]
    fields += list(json_strings(row["details"])) if row["details"] is not None else []
    return any(f is not None and p.search(f) for f in fields for p in pats)


def snapshot(conn):
    """Every audit row, by id, as a dict of COLUMNS."""
    rows = q(conn, "SELECT %s FROM audit.audit_log" % ", ".join(COLUMNS))
    return {r[0]: dict(zip(COLUMNS, r)) for r in rows}


def drop_roles(su):
    """Drop the test roles (and their privileges in this database) if they exist."""
    for r in ROLES:
        if q1(su, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (r,)):
            su.execute("DROP OWNED BY %s" % r)
            su.execute("DROP ROLE %s" % r)


def setup(su):
    su.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    drop_roles(su)
    su.execute("CREATE EXTENSION audit_db")
    wait_worker_maintenance(su)
    su.execute("CREATE ROLE gdpr_test_officer LOGIN IN ROLE audit_db_privacy_officer")
    su.execute("CREATE ROLE gdpr_test_writer LOGIN IN ROLE audit_db_writer")
    su.execute("CREATE ROLE gdpr_test_nobody LOGIN")
    su.execute("GRANT USAGE ON SCHEMA audit TO gdpr_test_nobody")
    su.execute("""
        INSERT INTO audit.audit_log (organization_id, principal_id, action, status, target_resource_type,
                                     target_resource_id, outcome_description, data_classification, details)
        SELECT CASE WHEN i %% 3 = 0 THEN 'org_b' ELSE 'org_a' END, v.principal, v.action, 'success', v.ttype,
               v.target, v.description, v.class, v.details
          FROM generate_series(0, %s - 1) i,
               LATERAL (SELECT format('patient-%%s', lpad(i::text, 4, '0')) AS p,
                               format('patient-%%s', lpad(((i + 1) %% %s)::text, 4, '0')) AS other) n,
               LATERAL (VALUES
                 (n.p, 'record.view', 'record', 'rec-' || i, n.p || ' viewed the record', 'PHI',
                  jsonb_build_object('ip', '10.0.0.' || (i %% 250), 'by', n.p)),
                 ('nurse-' || (i %% 7), 'record.update', 'patient', n.p, 'updated ' || n.p || ', not ' || n.other,
                  'CONFIDENTIAL', jsonb_build_object('seen', jsonb_build_array(n.p, n.other), 'note', 'x')),
                 (n.p, 'invoice.pay', 'invoice', 'inv-' || i, NULL, 'FINANCIAL',
                  jsonb_build_object('amount', i * 1.5, 'payer', n.p)),
                 ('system', 'reminder.sent', 'patient', n.p || '-reminder', NULL, 'INTERNAL',
                  jsonb_build_object(n.p, jsonb_build_object('nested', 'for ' || n.p || '.'))),
                 (n.p || 'x', 'login', NULL, NULL, 'not ' || n.p || '0 nor ' || n.p || 'x', 'INTERNAL', NULL)
               ) AS v(principal, action, ttype, target, description, class, details)
    """ % (PATIENTS, PATIENTS))
    seal_all(su)


def check_pseudonymized(su, officer, subject, strategy, extra=None):
    """Pseudonymize subject; check rows, leaves, count; return the pseudonym."""
    before = snapshot(su)
    expect = {i for i, r in before.items() if mentions(r, [subject])}
    kw = {"encryption_key": KEY} if strategy == "encryption" else {}
    args = ", encryption_key => %(encryption_key)s" if kw else ""
    p, n = officer.execute("SELECT * FROM audit.pseudonymize(%(s)s, %(t)s, 'ticket-" + strategy + "'" + args + ")",
                           dict(s=subject, t=strategy, **kw)).fetchone()
    after = snapshot(su)
    changed = {i for i in before if before[i] != after[i]}
    R.check(n == len(expect) and n > 0, "%s: pseudonymize(%s) reports the %d rows that named the patient"
            % (strategy, subject, len(expect)), "reported %s" % n)
    R.check(changed == expect, "%s: exactly those rows changed, nobody else's" % strategy,
            "unexpected %s, missing %s" % (sorted(changed - expect)[:5], sorted(expect - changed)[:5]))
    R.check(all(not mentions(after[i], [subject]) and mentions(after[i], [p]) for i in expect),
            "%s: each of them names the pseudonym and no longer the patient" % strategy)
    R.check(all(after[i]["hash"] == before[i]["hash"] for i in before),
            "%s: every leaf hash is unchanged" % strategy)
    R.check(all(after[i]["personal_data_salt"] is None and after[i]["personal_data_commitment"] is not None
                for i in expect), "%s: the rewritten rows lost their salt and keep their commitment" % strategy)
    seal_all(su)
    problems = q(su, "SELECT * FROM audit.verify()")
    R.check(problems == [], "%s: audit.verify() is clean afterwards" % strategy, problems)
    return p


def part1(su, officer, writer, nobody):
    info("1. pseudonymize with each strategy; reverse lookup")
    ph = check_pseudonymized(su, officer, "patient-0011", "hash")
    pt = check_pseudonymized(su, officer, "patient-0012", "token")
    pe = check_pseudonymized(su, officer, "patient-0013", "encryption")
    R.check(re.fullmatch(r"ph_[0-9a-f]{32}", ph) and re.fullmatch(r"pt_[0-9a-f]{32}", pt)
            and re.fullmatch(r"pe_[A-Za-z0-9_-]+", pe), "the pseudonyms have their strategies' forms", (ph, pt, pe))
    again = officer.execute("SELECT * FROM audit.pseudonymize('patient-0011', 'hash', 'ticket-again')").fetchone()
    R.check(again == (ph, 0), "hash: the same patient gets the same pseudonym again, with nothing left to change",
            again)
    other = check_pseudonymized(su, officer, "patient-0014", "hash")
    R.check(other != ph, "hash: another patient gets another pseudonym")

    lookups = q1(su, "SELECT count(*) FROM audit.audit_log WHERE action = 'gdpr.original_id'")
    R.check(q1(officer, "SELECT audit.original_id(%s)", (pt,)) == "patient-0012",
            "token: the officer reverses the pseudonym")
    R.check(q1(officer, "SELECT audit.original_id(%s, encryption_key => %s)", (pe, KEY)) == "patient-0013",
            "encryption: the officer reverses the pseudonym with its key")
    R.check(sqlstate_of(officer, "SELECT audit.original_id(%s, encryption_key => %s)", (pe, KEY + "!")) == "22023",
            "encryption: a wrong key is refused (22023)")
    for who, conn in (("the writer", writer), ("a role without grants", nobody)):
        for p in (pt, pe):
            R.check(sqlstate_of(conn, "SELECT audit.original_id(%s)", (p,)) == "42501",
                    "%s cannot reverse %s (42501)" % (who, p[:3]))
    logged = q(su, "SELECT principal_id, target_resource_id FROM audit.audit_log WHERE action = 'gdpr.original_id'"
                   " ORDER BY id")
    R.check(len(logged) == lookups + 2 and logged[-2:] == [("gdpr_test_officer", pt), ("gdpr_test_officer", pe)],
            "each successful lookup, and only those, is logged as gdpr.original_id", logged)


def part2(su, officer):
    info("2. export a patient in json, csv and xml")
    subject = "patient-0021"
    p = officer.execute("SELECT pseudonym FROM audit.pseudonymize(%s, 'token', 'ticket-export')",
                        (subject,)).fetchone()[0]
    su.execute("SELECT audit.log_event(action => 'record.view', status => 'success', principal_id => %s,"
               " organization_id => 'org_a', details => jsonb_build_object('again', %s::text))", (subject, subject))
    seal_all(su)
    rows = snapshot(su)
    docs = {f: q1(officer, "SELECT audit.export_subject(%s, format => %s)", (subject, f))
            for f in ("json", "csv", "xml")}
    # Each export is logged and names the subject: the n-th export also holds the n-1 before it.
    expect = {i for i, r in rows.items() if mentions(r, [subject, p])}
    exports = [i for i, r in snapshot(su).items() if r["action"] == "gdpr.export"]
    exports.sort()

    doc = json.loads(docs["json"])
    ids = {int(e["id"]) for e in doc["events"]}
    R.check(ids == expect and doc["rows"] == len(expect),
            "json parses and holds exactly the patient's %d rows (raw and pseudonymized)" % len(expect),
            "extra %s missing %s" % (sorted(ids - expect)[:5], sorted(expect - ids)[:5]))
    R.check(all(e["chain_status"] == "sealed" and e["leaf_intact"] for e in doc["events"]),
            "json: every row is reported sealed and intact")
    R.check(any(e["redacted"] for e in doc["events"]) and any(not e["redacted"] for e in doc["events"]),
            "json: pseudonymized and raw rows are both there, marked")

    table = list(csv.DictReader(io.StringIO(docs["csv"], newline="")))
    ids = {int(r["id"]) for r in table}
    R.check(ids == expect | {exports[0]}, "csv parses (RFC 4180) and holds the same rows, and the json export's event",
            "extra %s missing %s" % (sorted(ids - expect)[:5], sorted(expect - ids)[:5]))
    R.check(all(r["chain_status"] in ("sealed", "unsealed") for r in table) and
            all(json.loads(r["details"]) is not None for r in table if r["details"]),
            "csv: chain status in every row, details as JSON text")

    root = ET.fromstring(docs["xml"].encode())
    events = root.findall("event")
    ids = {int(next(f.text for f in e.findall("field") if f.get("name") == "id")) for e in events}
    R.check(root.tag == "subject_export" and ids == expect | set(exports[:2]),
            "xml parses (xml.etree) and holds the same rows, and both earlier exports' events",
            "extra %s missing %s" % (sorted(ids - expect)[:5], sorted(expect - ids)[:5]))


def left_for(su, row_ids, everything=False):
    """The text of what is left for the rows: their columns, their attestations
    and the erasure's record; with everything, every row of every table of
    the extension, and the mapping's originals decrypted with its key."""
    if everything:
        tables = [r[0] for r in q(su, "SELECT c.oid::regclass::text FROM pg_class c"
                                      " WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind IN ('r', 'p')")]
        texts = [q1(su, "SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM %s x" % t) for t in tables]
        texts += [r[0] for r in q(su, "SELECT audit.gdpr_decrypt(s.mapping_key, m.original_encrypted)"
                                      " FROM audit.pseudonym_mapping m, audit.pseudonym_secret s"
                                      " WHERE m.strategy <> 'encryption'")]
    else:
        texts = [r[0] for r in q(su, "SELECT a::text FROM audit.audit_log a WHERE id = ANY(%s)"
                                     " OR action = 'gdpr.erase'", (list(row_ids),))]
        texts += [r[0] for r in q(su, "SELECT d::text FROM audit.redacted_row d WHERE audit_log_id = ANY(%s)",
                                  (list(row_ids),))]
    return "\n".join(texts)


def search(su, blob, candidates):
    """The candidates (patient-NNNN) that blob confirms: named in it as a whole
    token, or their SHA-256, keyed pseudonym (in any scope) or lookup digest
    in it, computed here with the database's own HMAC key."""
    hmac_key = bytes(q1(su, "SELECT hmac_key FROM audit.pseudonym_secret"))
    named = set(re.findall(r"(?<![A-Za-z0-9_])patient-[0-9]{4}(?![A-Za-z0-9_])", blob))
    hexes = set(re.findall(r"[0-9a-f]{64}", blob))
    pseudonyms = set(re.findall(r"ph_[0-9a-f]{32}", blob))
    lookups = {bytes(r[0]).hex() for r in q(su, "SELECT original_lookup FROM audit.pseudonym_mapping")}
    lookups = {h for h in lookups if h in blob}

    def field(v):
        b = v.encode()
        return struct.pack(">I", len(b)) + b

    found = []
    for c in candidates:
        hits = []
        if c in named:
            hits.append("named")
        if hashlib.sha256(c.encode()).hexdigest() in hexes:
            hits.append("sha256")
        for scope in ("*", "org_a", "org_b"):
            mac = hmac.new(hmac_key, field("audit_db.pseudonym.v1") + field(scope) + field(c), hashlib.sha256)
            if "ph_" + mac.hexdigest()[:32] in pseudonyms:
                hits.append("keyed pseudonym")
            look = hmac.new(hmac_key, field("audit_db.lookup.v1") + field(scope) + field(c), hashlib.sha256)
            if look.hexdigest() in lookups:
                hits.append("lookup digest")
        if hits:
            found.append((c, hits))
    return found


def part3(su, officer):
    info("3. erase a patient; brute-force what is left")
    subject = "patient-0042"
    p = officer.execute("SELECT pseudonym FROM audit.pseudonymize(%s, 'hash', 'ticket-erase-1')",
                        (subject,)).fetchone()[0]
    su.execute("SELECT audit.log_event(action => 'record.view', status => 'failure', principal_id => %s,"
               " organization_id => 'org_a', outcome_description => 'denied to ' || %s::text)", (subject, subject))
    su.execute("SELECT audit.log_event(action => 'invoice.refund', status => 'success', principal_id => %s,"
               " organization_id => 'org_a', data_classification => 'FINANCIAL',"
               " details => jsonb_build_object('payee', %s::text))", (subject, subject))
    officer.execute("SELECT audit.export_subject(%s)", (subject,))
    seal_all(su)
    before = snapshot(su)
    rows = {i for i, r in before.items() if mentions(r, [subject, p])}
    kept = {i for i in rows if before[i]["data_classification"] == "FINANCIAL"
            or before[i]["action"].startswith("gdpr.")}
    salts = [bytes(before[i]["personal_data_salt"]).hex() for i in rows if before[i]["personal_data_salt"]]

    R.check([c for c, _ in search(su, left_for(su, rows), [subject])] == [subject],
            "before the erasure, the same search over those rows confirms the id (through its keyed pseudonym too)")
    erased, kept_n = officer.execute("SELECT * FROM audit.erase_subject(%s, 'ticket-erase-2')",
                                     (subject,)).fetchone()
    R.check((erased, kept_n) == (len(rows) - len(kept), len(kept)),
            "erase_subject reports %d erased and %d kept rows" % (len(rows) - len(kept), len(kept)),
            (erased, kept_n))
    after = snapshot(su)
    R.check(all(after[i]["outcome_description"] is None and after[i]["details"] is None for i in rows - kept),
            "erased rows lost their description and details")
    fin = [i for i in kept if before[i]["data_classification"] == "FINANCIAL"]
    R.check(fin and all(after[i]["details"] is not None and re.match(r"erased_[0-9a-f]{32}$", after[i]["principal_id"])
                        for i in fin),
            "FINANCIAL rows are kept, pseudonymized with an erasure token, details and all")
    R.check(all(after[i] == before[i] for i in before if i not in rows),
            "no other row changed")
    seal_all(su)
    problems = q(su, "SELECT * FROM audit.verify()")
    R.check(problems == [], "audit.verify() is clean after the erasure", problems)

    candidates = ["patient-%04d" % i for i in range(10000)]
    found = search(su, left_for(su, rows), candidates)
    R.check(subject not in [c for c, _ in found],
            "trying the 10,000 likely ids against what is left for the erased rows: the erased id is not confirmed",
            [f for f in found if f[0] == subject])
    info("other patients those rows name as themselves (not erased): %s" % [c for c, _ in found])
    everything = left_for(su, rows, everything=True)
    found = search(su, everything, candidates)
    R.check(subject not in [c for c, _ in found],
            "nothing in any table of the extension confirms the erased id (other patients' pseudonyms may)",
            [f for f in found if f[0] == subject])
    R.check("patient-0011" in [c for c, _ in found],
            "control: the same search confirms a patient who was only pseudonymized", found[:3])
    leaked = [x for x in salts if x in everything]
    R.check(salts and not leaked, "the %d destroyed salts appear nowhere in the extension's tables" % len(salts),
            leaked[:3])


def part4(su):
    info("4. the offline verifier with redacted rows")
    import subprocess
    import tempfile
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "audit_db_verify")
    lines = [r[0] for r in q(su, "SELECT * FROM audit.export_chain()")]
    digest = q1(su, "SELECT audit.digest()::text")
    tmp = tempfile.mkdtemp(prefix="gdpr_offline.")

    def verify(export_lines):
        path = os.path.join(tmp, "export.jsonl")
        with open(path, "w") as f:
            f.write("\n".join(export_lines) + "\n")
        with open(os.path.join(tmp, "digest.json"), "w") as f:
            f.write(digest)
        p = subprocess.run([sys.executable, tool, "chain", path, "--digest", os.path.join(tmp, "digest.json")],
                           capture_output=True, text=True)
        return p.returncode, p.stdout

    rc, out = verify(lines)
    R.check(rc == 0 and "redaction records" in out,
            "tools/audit_db_verify accepts the export with pseudonymized and erased rows and checks their "
            "redaction records", out[-600:])
    objs = [json.loads(x) for x in lines]
    target = next(i for i, o in enumerate(objs) if o["type"] == "row" and o["personal_data_salt"] is None
                  and o["details"] is not None)
    bad = list(lines)
    o = dict(objs[target])
    o["details"] = json.dumps({"forged": True})
    bad[target] = json.dumps(o)
    rc, out = verify(bad)
    R.check(rc == 1 and re.search(r"row=%d modified: .*differ from what GDPR request" % o["id"], out),
            "a redacted row's personal fields edited in the export are reported", out[-600:])
    drop = next(i for i, x in enumerate(objs) if x["type"] == "redaction")
    rc, out = verify(lines[:drop] + lines[drop + 1:])
    R.check(rc == 1 and "GDPR request %d" % objs[drop]["request_id"] in out,
            "a redaction record dropped from the export is reported", out[-600:])


def main():
    su = connect()
    try:
        setup(su)
        officer, writer, nobody = (connect(r) for r in ROLES)
        part1(su, officer, writer, nobody)
        part2(su, officer)
        part3(su, officer)
        part4(su)
        for c in (officer, writer, nobody):
            c.close()
    except Exception as e:  # noqa: BLE001 - report, go on to cleanup
        R.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        su.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
        drop_roles(su)
        su.close()
    return R.finish("gdpr")


if __name__ == "__main__":
    sys.exit(main())
