// examples/node/audit_client.js: audit_db from Node.js with the `pg` package.
//
// Logs events, seals and verifies the chain, exports one data subject and
// reads a report, using only SQL. Connects through the libpq environment
// variables (PGHOST, PGPORT, PGUSER, PGDATABASE), which `pg` reads, to a
// database with the extension, as a role that may log, read, verify and
// export (e.g. the extension's owner). Prints one JSON document with what it
// did (test/clients.py checks it).
//
//   cd examples/node && npm ci && node audit_client.js
'use strict';

const { Client } = require('pg');

async function main() {
  const client = new Client();
  await client.connect();
  try {
    const ids = [];
    for (const [action, status] of [['login', 'success'], ['record.view', 'success'], ['login', 'failure']]) {
      const r = await client.query(
        'SELECT audit.log_event(action => $1, status => $2, principal_id => $3, organization_id => $4,'
        + ' details => $5::jsonb) AS id',
        [action, status, 'js-bob', 'js-clinic', JSON.stringify({ client: 'node' })]);
      ids.push(Number(r.rows[0].id));
    }
    await client.query('SELECT * FROM audit.seal()');
    const problems = (await client.query('SELECT count(*)::int AS n FROM audit.verify()')).rows[0].n;
    const digest = (await client.query('SELECT audit.digest() AS d')).rows[0].d;
    const exported = JSON.parse((await client.query('SELECT audit.export_subject($1) AS doc', ['js-bob'])).rows[0].doc);
    const report = JSON.parse((await client.query(
      "SELECT audit.generate_report('failed_authentication', $1::jsonb) AS doc",
      [JSON.stringify({ from: '2000-01-01' })])).rows[0].doc);
    console.log(JSON.stringify({
      client: 'node',
      logged_ids: ids,
      verify_problems: problems,
      chain_height: digest.height,
      exported_rows: exported.rows,
      exported_actions: [...new Set(exported.events.map((e) => e.action))].sort(),
      report_rows: report.rows.map((r) => [r.principal_id, r.failures]),
    }));
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
