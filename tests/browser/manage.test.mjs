// Changing things after they exist: the token refresh timer, editing and
// rotating an integration, editing and deleting users, editing, deriving and
// deleting a ticket.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiCall, createIntegration, logIn, openPage, openTab, registerViaApi, screenshotter, startBrowser,
} from './lib.mjs';

const shot = screenshotter('manage');

describe('managing integrations, users and tickets', () => {
  let browser;
  let page;
  let admin;

  before(async () => {
    admin = await registerViaApi('Manage Inc');
    browser = await startBrowser();
    page = await openPage(browser.context, { fakeClock: true });
    await logIn(page, admin.username, admin.password);
  });

  after(async () => {
    await browser?.close();
  });

  test('refreshes the access token before it expires', async () => {
    const first = await page.evaluate(() => session.access_token);
    // Access tokens live 1 h; the page refreshes a minute before.
    await page.clock.fastForward('59:30');
    await page.waitForFunction((old) => session.access_token !== old, first, { polling: 100 });
    assert.match(await page.locator('#raw-summary').innerText(), /POST \/api\/auth\/refresh → 200/);
    // The new token works.
    await openTab(page, 'Users');
    await page.locator('#users-table tr', { hasText: admin.username }).waitFor();
  });

  test('edits an integration, rotates its credentials and deletes it', async () => {
    await createIntegration(page, { provider: 'MERAKI', name: 'Branch offices', credentials: { api_key: 'first-key' } });
    const row = () => page.locator('#integrations-table tr', { hasText: 'Branch offices' });
    await row().getByRole('button', { name: 'Edit' }).click();
    const form = page.locator('#integration-form');
    assert.equal(await form.locator('[name=provider]').isDisabled(), true, 'the provider is fixed');
    assert.equal(await form.locator('[name=cred_api_key]').isDisabled(), true, 'credentials stay unless rotating');
    await form.locator('[name=name]').fill('Branch offices (EU)');
    await form.locator('[name=rotate]').check();
    await form.locator('[name=cred_api_key]').fill('second-key');
    await shot(page, 'integration-edit');
    await form.locator('button[type=submit]').click();
    await page.locator('#integrations-table tr', { hasText: 'Branch offices (EU)' }).waitFor();
    await row().getByRole('button', { name: 'Credentials' }).click();
    await page.locator('#credentials-view').getByText('second-key').waitFor();

    await row().getByRole('button', { name: 'Delete' }).click();
    await page.locator('#integrations-table .empty').waitFor();
  });

  test('changes a user\'s role and email, then deletes the user', async () => {
    const carol = { username: `carol-${Date.now()}`, email: 'carol@manage.example', password: 'carol has a long password' };
    const created = await apiCall('POST', '/api/users', { token: admin.token, body: { ...carol, role: 'USER' } });
    assert.equal(created.status, 201);
    await openTab(page, 'Users');
    const row = page.locator('#users-table tr', { hasText: carol.username });
    await row.getByRole('button', { name: 'Edit' }).click();
    const form = page.locator('#user-form');
    assert.equal(await form.locator('[name=username]').isDisabled(), true);
    await form.locator('[name=email]').fill('carol.admin@manage.example');
    await form.locator('[name=role]').selectOption('ADMIN');
    await form.locator('[name=password]').fill('short');
    await form.locator('button[type=submit]').click();
    // The password policy answers 422 naming the field; the form says so.
    await form.locator('.form-problem', { hasText: 'Field: password' }).waitFor();
    assert.match(await form.locator('[name=password]').getAttribute('class'), /invalid/);
    await shot(page, 'user-problem');
    await form.locator('[name=password]').fill('');
    await form.locator('button[type=submit]').click();
    await row.getByText('carol.admin@manage.example').waitFor();
    assert.match(await row.innerText(), /ADMIN/);

    await row.getByRole('button', { name: 'Delete' }).click();
    await row.waitFor({ state: 'detached' });
    // The last ADMIN (the caller) has no Delete button on its own row.
    const own = page.locator('#users-table tr', { hasText: admin.username });
    assert.equal(await own.getByRole('button', { name: 'Delete' }).count(), 0);
  });

  test('edits a pending ticket, hands it to a human, and deletes it', async () => {
    await openTab(page, 'Tickets');
    await page.locator('#tickets-new').click();
    // No integrations left: the form says where to make one, and a ticket without actions is allowed.
    await page.locator('#ticket-form-no-integrations').waitFor();
    await page.locator('#ticket-form [name=subject]').fill('Call the ISP abuse desk');
    await page.locator('#ticket-form button[type=submit]').click();
    const head = page.locator('#ticket-detail .ticket-head');
    await head.locator('h2', { hasText: 'Call the ISP abuse desk' }).waitFor();
    assert.match(await head.locator('.badge').innerText(), /PENDING/);

    page.promptAnswers.push('Call the ISP abuse desk about 203.0.113.7', 'Ticket #4411 at the ISP.');
    await head.getByRole('button', { name: 'Edit' }).click();
    await page.locator('#ticket-detail h2', { hasText: 'about 203.0.113.7' }).waitFor();
    assert.match(await page.locator('#ticket-detail .description').innerText(), /#4411/);

    page.promptAnswers.push('The ISP needs a phone call.');
    await page.locator('#ticket-detail').getByRole('button', { name: /Hand to a human/ }).click();
    await page.locator('#ticket-detail .ticket-head .badge', { hasText: 'DERIVED' }).waitFor();
    assert.match(await page.locator('#ticket-detail .reason').innerText(), /phone call/);
    await shot(page, 'ticket-derived');

    await page.locator('#ticket-detail').getByRole('button', { name: 'Delete' }).click();
    await page.waitForFunction(() => location.hash === '#/tickets');
    await page.locator('#tickets-table .empty').waitFor();
  });

  test('raised no script errors', () => {
    assert.deepEqual(page.errors.map(String), []);
  });
});
