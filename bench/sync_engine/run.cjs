// Drives @supabase/stripe-sync-engine for bench/compare_sync_engine.py.
//
//   node run.cjs migrate --database-url postgresql://postgres@127.0.0.1:5432/sync_engine
//   node run.cjs sync --database-url ... --api-base http://127.0.0.1:12111 --api-key sk_test_x
//
// Each flag falls back to an environment variable: SYNC_ENGINE_DATABASE_URL, STRIPE_API_BASE,
// STRIPE_API_KEY. `sync` runs the engine's customer backfill and prints one JSON line:
// {"engine": version, "synced": n, "rows": n, "seconds": s, "cpu_seconds": s, "max_rss_mb": n},
// plus "error" (and exit status 1) when the backfill failed. Only the backfill itself is timed
// (not start-up, connecting or migrations); `rows` is a count(*) of the engine's customers table
// taken afterwards. The Stripe client is the SDK's default apart from its address: stripe-node
// retries a request `max_network_retries` times (2 in Node), on connection errors, 409, 5xx
// and answers with `Stripe-Should-Retry: true`, not on a rate-limit 429, which has no such
// header, so a 429 ends the backfill.
//
// CommonJS on purpose: the package's ES module build resolves its migrations directory through
// `__dirname`, which ES modules lack, and runMigrations() swallows the resulting error.

'use strict'

const { parseArgs } = require('node:util')
const { performance } = require('node:perf_hooks')
const Stripe = require('stripe')
const { StripeSync, runMigrations } = require('@supabase/stripe-sync-engine')
// The package's "exports" hide its package.json: find it next to the entry point's dist/.
const enginePackage = require(
  require('node:path').join(require.resolve('@supabase/stripe-sync-engine'), '..', '..', 'package.json'),
)

// The migrations create their tables in "stripe" whatever `schema` says, so the engine gets a
// database of its own rather than a schema of its own.
const SCHEMA = 'stripe'

function options() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'database-url': { type: 'string', default: process.env.SYNC_ENGINE_DATABASE_URL },
      'api-base': { type: 'string', default: process.env.STRIPE_API_BASE },
      'api-key': { type: 'string', default: process.env.STRIPE_API_KEY },
      verbose: { type: 'boolean', default: false },
    },
  })
  const command = positionals[0]
  if (!['migrate', 'sync'].includes(command) || !values['database-url']) {
    throw new Error('usage: node run.cjs migrate|sync --database-url URL [--api-base URL --api-key KEY]')
  }
  if (command === 'sync' && (!values['api-base'] || !values['api-key'])) {
    throw new Error('sync needs --api-base and --api-key (or STRIPE_API_BASE, STRIPE_API_KEY)')
  }
  return { command, ...values }
}

// The engine logs through an optional pino-style logger; without one, runMigrations() fails
// silently. Errors and warnings always go to stderr, the rest only with --verbose.
function makeLogger(verbose) {
  const write = (level) => (first, second) => {
    if (!verbose && level !== 'error' && level !== 'warn') return
    const parts = [first, second].filter((x) => x !== undefined)
    const text = parts.map((x) => (x instanceof Error ? x.stack : typeof x === 'string' ? x : JSON.stringify(x)))
    process.stderr.write(`[sync-engine ${level}] ${text.join(' ')}\n`)
  }
  const logger = {
    trace: write('trace'),
    debug: write('debug'),
    info: write('info'),
    warn: write('warn'),
    error: write('error'),
    fatal: write('error'),
    child: () => logger,
  }
  return logger
}

// The same client the engine builds in its constructor, pointed at the emulator: the engine has
// no option for the API address, but its `stripe` field is public.
function emulatorClient(apiKey, apiBase) {
  const url = new URL(apiBase)
  const protocol = url.protocol.replace(':', '')
  return new Stripe(apiKey, {
    host: url.hostname,
    port: url.port || (protocol === 'https' ? '443' : '80'),
    protocol,
    appInfo: { name: 'Stripe Postgres Sync' },
  })
}

async function countRows(pool) {
  const { rows } = await pool.query(`select count(*)::int as n from "${SCHEMA}"."customers"`)
  return rows[0].n
}

async function migrate(opts, logger) {
  await runMigrations({ databaseUrl: opts['database-url'], schema: SCHEMA, logger })
  const { Client } = require('pg')
  const client = new Client({ connectionString: opts['database-url'] })
  await client.connect()
  try {
    // runMigrations() only logs its errors: check that it did its job.
    const { rows } = await client.query(`select to_regclass('"${SCHEMA}"."customers"') as t`)
    if (rows[0].t === null) throw new Error('the engine\'s migrations did not create stripe.customers')
  } finally {
    await client.end()
  }
}

async function sync(opts, logger) {
  const engine = new StripeSync({
    poolConfig: { connectionString: opts['database-url'] }, // engine's default pool size: 10
    schema: SCHEMA,
    stripeSecretKey: opts['api-key'],
    stripeWebhookSecret: 'whsec_unused',
    logger,
  })
  engine.stripe = emulatorClient(opts['api-key'], opts['api-base'])
  try {
    await engine.postgresClient.query('select 1') // connect before the clock starts
    const cpu = process.cpuUsage()
    const started = performance.now()
    // A failed backfill (e.g. a 429 the SDK does not retry) still reports how long it ran and
    // what it left, with `error`, and exits 1 once the line is written.
    let result = {}
    let error = null
    try {
      result = await engine.syncBackfill({ object: 'customer' })
    } catch (err) {
      error = err
    }
    const seconds = (performance.now() - started) / 1000
    const used = process.cpuUsage(cpu)
    const rows = await countRows(engine.postgresClient.pool)
    const out = {
      engine: enginePackage.version,
      stripe_node: Stripe.PACKAGE_VERSION,
      max_network_retries: engine.stripe.getMaxNetworkRetries(),
      synced: result.customers?.synced ?? 0,
      rows,
      seconds,
      cpu_seconds: (used.user + used.system) / 1e6,
      max_rss_mb: process.resourceUsage().maxRSS / 1024,
    }
    if (error) {
      out.error = `${error.type || error.name}: ${error.statusCode || ''} ${error.message}`.trim()
      process.exitCode = 1
    }
    process.stdout.write(JSON.stringify(out) + '\n')
  } finally {
    await engine.close()
  }
}

async function main() {
  const opts = options()
  const logger = makeLogger(opts.verbose)
  if (opts.command === 'migrate') await migrate(opts, logger)
  else await sync(opts, logger)
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
