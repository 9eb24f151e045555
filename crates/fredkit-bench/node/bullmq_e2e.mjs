// The BullMQ contender of fredkit-bench's `jobs` suite.
//
// Started once per bench run by fredkit-bench (crates/fredkit-bench/src/suites/jobs.rs),
// from target/bench/bullmq where `npm ci` installed bullmq and ioredis:
//
//   node bullmq_e2e.mjs <redis-url> <queue-name> <workers> <concurrency> <in-flight> <keep-completed>
//
// It starts <workers> BullMQ Workers (each its own connections, <concurrency>
// jobs at once, a no-op processor) and one Queue, prints {"ready":true}, then
// reads one JSON request a line from stdin and answers each with one JSON line
// on stdout (logs go to stderr):
//
//   {"jobs": N}  ->  {"jobs": N, "elapsed_s": S, "jobs_per_s": R}
//
// A round adds N jobs with <in-flight> `Queue.add` calls outstanding at once
// and ends when the workers have reported N more jobs completed (the
// `completed` event fires after moveToCompleted has returned, i.e. when the
// job is completed in Redis): enqueue -> handled -> completed, the same flow
// as fredkit-jobs' side. Completed jobs are kept up to <keep-completed>
// (removeOnComplete: {count}), failed ones are kept. stdin closed -> close and exit.

import { Queue, Worker } from 'bullmq';
import { createInterface } from 'node:readline';
import { readFileSync } from 'node:fs';

const [url, queueName, workersArg, concurrencyArg, inFlightArg, keepArg] = process.argv.slice(2);
if (!url || !queueName) {
  console.error('usage: node bullmq_e2e.mjs <redis-url> <queue> <workers> <concurrency> <in-flight> <keep-completed>');
  process.exit(2);
}
const workers = Number(workersArg ?? 4);
const concurrency = Number(concurrencyArg ?? 16);
const inFlight = Number(inFlightArg ?? 64);
const keep = Number(keepArg ?? 1000);

const u = new URL(url);
const connection = {
  host: u.hostname,
  port: Number(u.port || 6379),
  password: u.password ? decodeURIComponent(u.password) : undefined,
  username: u.username ? decodeURIComponent(u.username) : undefined,
  // Required by BullMQ for the workers' blocking connections.
  maxRetriesPerRequest: null,
};
const prefix = 'bench-bullmq';

let completed = 0;
let waiter = null;
const onCompleted = () => {
  completed += 1;
  if (waiter && completed >= waiter.target) {
    const w = waiter;
    waiter = null;
    w.resolve();
  }
};

const pool = [];
for (let i = 0; i < workers; i++) {
  const w = new Worker(queueName, async () => {}, { connection, prefix, concurrency });
  w.on('completed', onCompleted);
  w.on('failed', (job, err) => console.error(`bullmq job ${job?.id} failed: ${err}`));
  w.on('error', (err) => console.error(`bullmq worker error: ${err}`));
  pool.push(w);
}
const queue = new Queue(queueName, {
  connection,
  prefix,
  defaultJobOptions: { removeOnComplete: { count: keep } },
});
await queue.waitUntilReady();
await Promise.all(pool.map((w) => w.waitUntilReady()));

async function round(n) {
  const target = completed + n;
  const done = new Promise((resolve) => {
    waiter = { target, resolve };
    if (completed >= target) {
      waiter = null;
      resolve();
    }
  });
  const started = process.hrtime.bigint();
  let next = 0;
  const producer = async () => {
    while (next < n) {
      const i = next++;
      await queue.add('noop', { i });
    }
  };
  const producers = [];
  for (let p = 0; p < Math.min(inFlight, n); p++) producers.push(producer());
  await Promise.all(producers);
  await done;
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  return { jobs: n, elapsed_s: elapsed, jobs_per_s: n / elapsed };
}

const version = JSON.parse(readFileSync(new URL('./node_modules/bullmq/package.json', import.meta.url), 'utf8')).version;
process.stdout.write(JSON.stringify({ ready: true, bullmq: version }) + '\n');

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    process.stdout.write(JSON.stringify({ error: `bad request: ${e}` }) + '\n');
    continue;
  }
  try {
    const r = await round(Number(req.jobs));
    process.stdout.write(JSON.stringify(r) + '\n');
  } catch (e) {
    process.stdout.write(JSON.stringify({ error: String(e) }) + '\n');
  }
}
await Promise.all(pool.map((w) => w.close()));
await queue.close();
process.exit(0);
