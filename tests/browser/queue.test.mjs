// The ADMIN Queue tab.
//
// 1. Against a stand-in of the jobs API (Playwright answers /api/jobs and
//    /api/queue/stats in the browser with the documented shapes), so the
//    tab's rendering, auto-refresh, retry and cancel are tested today.
// 2. The real walk (a live integration pointed at a closed port fails, is
//    fixed, retried from the Queue tab and reaches EXECUTED). It is skipped
//    while GET /api/jobs answers 404 and turns on by itself once it exists.
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DESKTOP, PHONE, apiCall, closedPort, horizontalOverflow, logIn, openPage, openTab, registerViaApi, screenshotter, startBrowser,
} from './lib.mjs';

const shot = screenshotter('queue');

// Probe once: a company of our own, then GET /api/jobs with its token.
const owner = await registerViaApi('Queue Ops');
const probe = await apiCall('GET', '/api/jobs?limit=1', { token: owner.token });
const JOBS_API_MISSING = probe.status === 404
  ? 'GET /api/jobs answers 404: the jobs API has not landed on this server yet'
  : false;

function job(overrides) {
  const now = new Date().toISOString();
  return {
    id: randomUUID(), ticket_id: randomUUID(), ticket_subject: 'Block scanner 203.0.113.7',
    position: 0, provider: 'PALO_ALTO', action: 'block_ip', integration_id: randomUUID(),
    status: 'SUCCEEDED', attempts: 1, max_attempts: 5, last_error: null, next_attempt_at: null,
    started_at: now, finished_at: now, created_at: now, ...overrides,
  };
}

describe('Queue tab against a stand-in jobs API', () => {
  let browser;
  let page;
  const failed = job({ status: 'FAILED', attempts: 5, last_error: 'transient: connection refused (127.0.0.1:9)', ticket_subject: 'Failing block' });
  const pending = job({ status: 'PENDING', provider: 'SPLUNK', action: 'send_event', position: 1, attempts: 0, started_at: null, finished_at: null, ticket_subject: 'Waiting send' });
  const done = job({});
  const calls = { list: 0, stats: 0, commands: [] };

  before(async () => {
    browser = await startBrowser();
    page = await openPage(browser.context);
    await page.route(/\/api\/queue\/stats$/, (route) => {
      calls.stats += 1;
      const count = (s) => [failed, pending, done].filter((j) => j.status === s).length;
      route.fulfill({
        json: {
          by_status: Object.fromEntries(['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'DERIVED', 'CANCELLED'].map((s) => [s, count(s)])),
          by_provider: { PALO_ALTO: { FAILED: count('FAILED'), SUCCEEDED: 1 }, SPLUNK: { PENDING: count('PENDING') } },
          oldest_pending_age_secs: 42,
          last_5m: { succeeded: 3, failed: 1, throughput_per_min: 0.8, failure_rate: 0.25 },
          last_60m: { succeeded: 30, failed: 2, throughput_per_min: 0.53, failure_rate: 0.0625 },
        },
      });
    });
    await page.route(/\/api\/jobs(\?.*)?$/, (route) => {
      calls.list += 1;
      // A retried job is seen running, then done, on the following polls.
      if (failed.status === 'PENDING' && calls.list > 1) Object.assign(failed, { status: 'SUCCEEDED', last_error: null });
      route.fulfill({ json: { items: [pending, failed, done], next_cursor: null } });
    });
    await page.route(/\/api\/jobs\/[^/]+\/(retry|cancel)$/, (route) => {
      const [, id, command] = new URL(route.request().url()).pathname.match(/\/api\/jobs\/([^/]+)\/(\w+)$/);
      calls.commands.push(`${route.request().method()} ${command} ${id}`);
      const target = [failed, pending].find((j) => j.id === id);
      Object.assign(target, command === 'retry' ? { status: 'PENDING', attempts: 0 } : { status: 'CANCELLED' });
      calls.list = 0;
      route.fulfill({ json: target });
    });
    await logIn(page, owner.username, owner.password);
  });

  after(async () => {
    await browser?.close();
  });

  test('shows the stats and the jobs', async () => {
    await openTab(page, 'Queue');
    const failedRow = page.locator(`#jobs-table tr[data-job-id="${failed.id}"]`);
    await failedRow.waitFor();
    assert.match(await failedRow.innerText(), /Failing block[\s\S]*FAILED[\s\S]*5 \/ 5[\s\S]*connection refused/);
    assert.match(await page.locator('#queue-stats').innerText(), /Oldest pending\s+42 s/i);
    assert.match(await page.locator('#queue-stats').innerText(), /Last 5 min\s+3 ok · 1 failed\s+0\.8\/min · 25% failures/i);
    assert.equal(await failedRow.getByRole('button', { name: 'Retry' }).count(), 1);
    assert.equal(await page.locator(`#jobs-table tr[data-job-id="${pending.id}"]`).getByRole('button', { name: 'Cancel' }).count(), 1);
    assert.equal(await page.locator(`#jobs-table tr[data-job-id="${done.id}"] button`).count(), 0);
    await shot(page, 'stand-in');
    await page.setViewportSize(PHONE);
    assert.equal(await horizontalOverflow(page), 0, 'the Queue tab fits at 375 px');
    await shot(page, 'stand-in-phone');
    await page.setViewportSize(DESKTOP);
  });

  test('retries a failed job and sees it succeed through auto-refresh', async () => {
    const failedRow = page.locator(`#jobs-table tr[data-job-id="${failed.id}"]`);
    await failedRow.getByRole('button', { name: 'Retry' }).click();
    await failedRow.locator('.badge', { hasText: 'SUCCEEDED' }).waitFor({ timeout: 10_000 });
    assert.deepEqual(calls.commands, [`POST retry ${failed.id}`]);
  });

  test('cancels a pending job', async () => {
    const pendingRow = page.locator(`#jobs-table tr[data-job-id="${pending.id}"]`);
    await pendingRow.getByRole('button', { name: 'Cancel' }).click();
    await pendingRow.locator('.badge', { hasText: 'CANCELLED' }).waitFor();
    assert.equal(calls.commands.at(-1), `POST cancel ${pending.id}`);
  });

  test('stops polling when the tab is left', async () => {
    await openTab(page, 'Tickets');
    const before = calls.stats;
    await page.waitForTimeout(4000);
    assert.equal(calls.stats, before);
  });

  test('raised no script errors', () => {
    assert.deepEqual(page.errors.map(String), []);
  });
});

// Each test carries the skip (not only the suite), so the summary counts them as skipped.
const needsJobsApi = { skip: JOBS_API_MISSING };

describe('Queue walk against the real jobs API', () => {
  let browser;
  let page;
  let ticketUrl;
  let jobId;
  const subject = 'Block 203.0.113.99 through a firewall that is down';

  before(async () => {
    if (JOBS_API_MISSING) return;
    browser = await startBrowser();
    page = await openPage(browser.context);
    await logIn(page, owner.username, owner.password);
  });

  after(async () => {
    await browser?.close();
  });

  test('a live integration pointed at a closed port makes the job fail', needsJobsApi, async (t) => {
    const port = await closedPort();
    await openTab(page, 'Integrations');
    await page.locator('#integrations-new').click();
    const form = page.locator('#integration-form');
    await form.locator('[name=provider]').selectOption('PALO_ALTO');
    await form.locator('[name=name]').fill('Firewall (down)');
    await form.locator('[name=mode][value=live]').check();
    await form.locator('[name=base_url]').fill(`http://127.0.0.1:${port}`);
    await form.locator('[name=cred_api_key]').fill('live-key');
    await form.locator('button[type=submit]').click();
    await page.locator('#integrations-table tr', { hasText: 'Firewall (down)' }).waitFor();

    await openTab(page, 'Tickets');
    await page.locator('#tickets-new').click();
    const ticketForm = page.locator('#ticket-form');
    await ticketForm.locator('[name=subject]').fill(subject);
    await ticketForm.locator('.action-integration').selectOption({ label: 'Firewall (down) (Palo Alto, live)' });
    await ticketForm.locator('.action-params').fill('{"ip": "203.0.113.99"}');
    await ticketForm.locator('.action-attempts').fill('2');
    await ticketForm.locator('button[type=submit]').click();
    await page.locator('#ticket-detail .ticket-head h2', { hasText: subject }).waitFor();
    ticketUrl = page.url();
    const status = page.locator('#ticket-detail .ticket-head .badge', { hasText: /FAILED|DERIVED|EXECUTED/ });
    await status.waitFor({ timeout: 30_000 });
    const reached = await status.innerText();
    if (reached === 'DERIVED') {
      t.skip('this build hands live actions to a human instead of calling the provider');
      return;
    }
    assert.equal(reached, 'FAILED');
    const action = page.locator('#ticket-detail ol.actions > li').first();
    assert.match(await action.locator('.last-error').innerText(), /\S/);
    jobId = await action.getAttribute('data-action-id');
    await shot(page, 'ticket-failed');
  });

  test('the Queue tab lists the failed job with its error', needsJobsApi, async (t) => {
    if (!jobId) return t.skip('no failed job from the previous step');
    await openTab(page, 'Queue');
    const row = page.locator(`#jobs-table tr[data-job-id="${jobId}"]`);
    await row.waitFor();
    assert.match(await row.innerText(), /FAILED/);
    assert.notEqual(await page.locator('#queue-stats .stat-failed .stat-value').innerText(), '0');
    await shot(page, 'job-failed');
  });

  test('fixing the integration and pressing Retry takes the ticket to EXECUTED', needsJobsApi, async (t) => {
    if (!jobId) return t.skip('no failed job from the previous step');
    await openTab(page, 'Integrations');
    await page.locator('#integrations-table tr', { hasText: 'Firewall (down)' }).getByRole('button', { name: 'Edit' }).click();
    await page.locator('#integration-form [name=mode][value=simulated]').check();
    await page.locator('#integration-form button[type=submit]').click();
    await page.locator('#integrations-table tr', { hasText: 'Firewall (down)' }).getByText('simulated').waitFor();

    await openTab(page, 'Queue');
    const row = page.locator(`#jobs-table tr[data-job-id="${jobId}"]`);
    await row.getByRole('button', { name: 'Retry' }).click();
    // No clicks from here: the tab refreshes itself.
    await row.locator('.badge', { hasText: 'SUCCEEDED' }).waitFor({ timeout: 30_000 });
    await shot(page, 'job-retried');
    await page.goto(ticketUrl);
    await page.locator('#ticket-detail .ticket-head .badge', { hasText: 'EXECUTED' }).waitFor({ timeout: 15_000 });
    await shot(page, 'ticket-executed');
  });

  test('cancelling a job waiting for its next attempt hands the ticket to a human', needsJobsApi, async () => {
    const port = await closedPort();
    const integration = await apiCall('POST', '/api/integrations', {
      token: owner.token,
      body: { provider: 'PALO_ALTO', name: 'Firewall (still down)', mode: 'live', settings: { base_url: `http://127.0.0.1:${port}` }, credentials: { api_key: 'k' } },
    });
    const ticket = await apiCall('POST', '/api/tickets', {
      token: owner.token,
      body: {
        subject: 'Keeps retrying until cancelled',
        actions: [{ integration_id: integration.data.id, action: 'block_ip', params: { ip: '203.0.113.100' }, max_attempts: 30 }],
      },
    });
    const cancelJobId = ticket.data.actions[0].id;
    await openTab(page, 'Queue');
    await page.locator('#jobs-ticket').fill(ticket.data.id);
    await page.locator('#jobs-ticket').dispatchEvent('change');
    const row = page.locator(`#jobs-table tr[data-job-id="${cancelJobId}"]`);
    // Backoff grows per attempt: after a few, the job waits seconds between attempts.
    await page.waitForFunction((id) => {
      const cells = document.querySelector(`#jobs-table tr[data-job-id="${id}"]`)?.innerText || '';
      const attempts = Number((cells.match(/(\d+) \/ 30/) || [])[1] || 0);
      return attempts >= 4 && /PENDING/.test(cells);
    }, cancelJobId, { timeout: 30_000 });
    await row.getByRole('button', { name: 'Cancel' }).click();
    await row.locator('.badge', { hasText: 'CANCELLED' }).waitFor({ timeout: 10_000 });
    const after = await apiCall('GET', `/api/tickets/${ticket.data.id}`, { token: owner.token });
    assert.equal(after.data.status, 'DERIVED');
  });

  test('raised no script errors', needsJobsApi, () => {
    assert.deepEqual(page.errors.map(String), []);
  });
});
