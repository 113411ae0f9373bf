// The main walk of basic_frontend, one step per test, in order, in one tab:
// register → two simulated integrations → a two-action ticket followed live
// to EXECUTED → a USER → log in as that USER → phone-width ticket view.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PHONE, RUN_ID, createIntegration, horizontalOverflow, logIn, openPage, openTab,
  registerCompany, screenshotter, startBrowser,
} from './lib.mjs';

const shot = screenshotter('walk');
const admin = {
  company: `Acme Security ${RUN_ID}`,
  username: `alice-${RUN_ID}`,
  email: `alice-${RUN_ID}@acme.example`,
  password: 'correct horse battery staple',
};
const user = { username: `bob-${RUN_ID}`, email: `bob-${RUN_ID}@acme.example`, password: 'another long passphrase' };
const subject = `Block scanner 203.0.113.7 (${RUN_ID})`;

describe('basic_frontend walk', () => {
  let browser;
  let page;
  let ticketUrl;

  before(async () => {
    browser = await startBrowser();
    page = await openPage(browser.context);
  });

  after(async () => {
    await browser?.close();
  });

  test('registers a new company and signs in as its ADMIN', async () => {
    await shot(page, 'signed-out');
    await registerCompany(page, admin);
    assert.match(await page.locator('#who').innerText(), /ADMIN/);
    assert.equal(await page.locator('#tabs a[data-tab=queue]').isVisible(), true);
    assert.equal(await page.locator('#tabs a[data-tab=audit]').isVisible(), true);
    await shot(page, 'registered');
  });

  test('creates a simulated Palo Alto and a simulated Splunk integration', async () => {
    await openTab(page, 'Integrations');
    await page.locator('#integrations-new').click();
    assert.equal(await page.locator('#integration-form [name=mode][value=simulated]').isChecked(), true,
      'simulated mode is preselected');
    await page.locator('#integration-form [data-cancel]').click();

    // Some simulated latency, so the ticket is seen in progress before it finishes.
    await createIntegration(page, {
      provider: 'PALO_ALTO', name: 'Edge firewall', credentials: { api_key: 'sim-pan-key' },
      settings: { simulated_latency_ms: 1500 },
    });
    await createIntegration(page, {
      provider: 'SPLUNK', name: 'SOC Splunk', credentials: { hec_token: 'sim-hec-token' },
      settings: { base_url: 'https://splunk.acme.example:8089' },
    });
    const rows = page.locator('#integrations-table tbody tr');
    assert.equal(await rows.count(), 2);
    await shot(page, 'integrations');

    // An ADMIN can read the stored credentials back.
    await page.locator('#integrations-table tr', { hasText: 'Edge firewall' }).getByRole('button', { name: 'Credentials' }).click();
    await page.locator('#credentials-view').getByText('sim-pan-key').waitFor();
    await shot(page, 'credentials');
  });

  test('shows a problem document with its detail and field', async () => {
    await openTab(page, 'Tickets');
    await page.locator('#tickets-new').click();
    const form = page.locator('#ticket-form');
    await form.locator('[name=subject]').fill(subject);
    await form.locator('.action-params').first().fill('{"ip": "not-an-ip"}');
    await form.locator('button[type=submit]').click();
    const problem = form.locator('.form-problem');
    await problem.waitFor();
    const text = await problem.innerText();
    assert.match(text, /\(422\)/);
    assert.match(text, /invalid IP address/);
    assert.match(text, /Field: actions\[0\]\.params/);
    assert.match(await page.locator('#raw-summary').innerText(), /POST \/api\/tickets → 422/);
    await page.locator('#raw summary').click();
    await shot(page, 'problem');
    await page.locator('#raw summary').click();
  });

  test('creates a ticket with block_ip then send_event and watches it reach EXECUTED without a reload', async () => {
    const form = page.locator('#ticket-form');
    // The form keeps the subject; restore the first action's example params.
    await form.locator('.action-name').first().selectOption('unblock_ip');
    await form.locator('.action-name').first().selectOption('block_ip');
    assert.match(await form.locator('.action-params').first().inputValue(), /"ip": "203\.0\.113\.7"/);
    await form.locator('[name=description]').fill('Seen scanning the VPN gateway; block it and tell the SOC.');
    await page.locator('#add-action').click();
    const second = form.locator('.action-row').nth(1);
    await second.locator('.action-integration').selectOption({ label: 'SOC Splunk (Splunk, simulated)' });
    await second.locator('.action-name').selectOption('send_event');
    assert.match(await second.locator('.action-params').inputValue(), /"event"/);
    await shot(page, 'new-ticket');

    // A marker that a reload would wipe out.
    await page.evaluate(() => { window.txdxNoReload = true; });
    await form.locator('button[type=submit]').click();
    await page.locator('#ticket-detail .ticket-head h2', { hasText: subject }).waitFor();
    ticketUrl = page.url();
    // In progress first, streamed: the block_ip action runs for 1.5 s.
    await page.locator('#ticket-detail .live', { hasText: '● live' }).waitFor();
    await page.locator('#ticket-detail ol.actions .badge', { hasText: 'RUNNING' }).waitFor();
    await shot(page, 'ticket-running');
    await page.locator('#ticket-detail .ticket-head .badge', { hasText: 'EXECUTED' }).waitFor({ timeout: 30_000 });
    assert.equal(await page.evaluate(() => window.txdxNoReload), true, 'the page was not reloaded');
    assert.equal(await page.locator('#ticket-detail .live').innerText(), 'final');

    const actions = page.locator('#ticket-detail ol.actions > li');
    assert.equal(await actions.count(), 2);
    const first = actions.nth(0);
    const secondAction = actions.nth(1);
    assert.match(await first.locator('.action-title').innerText(), /Palo Alto · block_ip[\s\S]*SUCCEEDED/);
    assert.match(await secondAction.locator('.action-title').innerText(), /Splunk · send_event[\s\S]*SUCCEEDED/);
    assert.match(await first.locator('.result').innerText(), /"registered"[\s\S]*203\.0\.113\.7/);
    assert.match(await secondAction.locator('.result').innerText(), /"text": "Success"/);
    assert.match(await first.locator('dl.meta').innerText(), /Attempts\s+1 \/ \d+/);
    await shot(page, 'ticket-executed');
  });

  test('lists the ticket and filters by status', async () => {
    await page.locator('#ticket-detail').getByRole('link', { name: '← All tickets' }).click();
    const row = page.locator('#tickets-table tr', { hasText: subject });
    await row.waitFor();
    assert.match(await row.innerText(), /EXECUTED/);
    await page.locator('#tickets-status').selectOption('FAILED');
    await page.locator('#tickets-table .empty').waitFor();
    await page.locator('#tickets-status').selectOption('EXECUTED');
    await row.waitFor();
    await shot(page, 'ticket-list');
    await page.locator('#tickets-status').selectOption('');
  });

  test('shows the audit log to the ADMIN', async () => {
    await openTab(page, 'Audit');
    await page.locator('#audit-table').getByText('ticket.created').waitFor();
    assert.match(await page.locator('#audit-table').innerText(), /integration\.credentials_read|integration\.created/);
    await shot(page, 'audit');
  });

  test('creates a USER in the Users tab', async () => {
    await openTab(page, 'Users');
    await page.locator('#users-new').click();
    const form = page.locator('#user-form');
    await form.locator('[name=username]').fill(user.username);
    await form.locator('[name=email]').fill(user.email);
    await form.locator('[name=password]').fill(user.password);
    await form.locator('[name=role]').selectOption('USER');
    await form.locator('button[type=submit]').click();
    const row = page.locator('#users-table tr', { hasText: user.username });
    await row.waitFor();
    assert.match(await row.innerText(), /USER/);
    await shot(page, 'users');
  });

  test('logs out, logs in as the USER, and offers no Queue or Audit tab', async () => {
    await page.locator('#logout').click();
    await page.locator('#login-form').waitFor();
    await logIn(page, user.username, user.password);
    assert.match(await page.locator('#who').innerText(), /USER/);
    assert.equal(await page.locator('#tabs a[data-tab=queue]').isVisible(), false);
    assert.equal(await page.locator('#tabs a[data-tab=audit]').isVisible(), false);
    assert.equal(await page.locator('#integrations-new').isVisible(), false);
    // Typing the address of an ADMIN tab leads back to the tickets.
    await page.evaluate(() => { location.hash = '#/queue'; });
    await page.waitForFunction(() => location.hash === '#/tickets');
    await page.locator('#tickets-table tr', { hasText: subject }).waitFor();
    await shot(page, 'user-signed-in');
  });

  test('survives an expired access token by refreshing once', async () => {
    await page.evaluate(() => { session.access_token = 'expired.or.tampered'; });
    await page.locator('#tickets-refresh').click();
    await page.waitForFunction(() => session.access_token !== 'expired.or.tampered');
    await page.locator('#tickets-table tr', { hasText: subject }).waitFor();
    // The table already held the ticket before the refresh: wait for the
    // retried request itself to be reported, not for whatever came first.
    await page.waitForFunction(
      () => /GET \/api\/tickets\?.* → 200/.test(document.querySelector('#raw-summary')?.innerText ?? ''),
    );
    assert.match(await page.locator('#raw-summary').innerText(), /GET \/api\/tickets\?.* → 200/);
  });

  test('fits a phone-width window on the ticket view', async () => {
    await page.setViewportSize(PHONE);
    await page.goto(ticketUrl);
    await page.locator('#ticket-detail .ticket-head .badge', { hasText: 'EXECUTED' }).waitFor();
    assert.equal(await horizontalOverflow(page), 0, 'nothing sticks out sideways at 375 px');
    await shot(page, 'phone-ticket');
    await page.locator('#tabs a[data-tab=tickets]').click();
    await page.locator('#tickets-table tr', { hasText: subject }).waitFor();
    assert.equal(await horizontalOverflow(page), 0);
    await shot(page, 'phone-ticket-list');
  });

  test('raised no script errors', () => {
    assert.deepEqual(page.errors.map(String), []);
  });
});
