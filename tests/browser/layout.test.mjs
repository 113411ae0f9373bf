// Every view at 1280 px and at 375 px: nothing sticks out sideways, and a
// screenshot of each for a human to look at (artifacts/browser/layout-*.png).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DESKTOP, PHONE, apiCall, horizontalOverflow, logIn, openPage, openTab, registerViaApi,
  screenshotter, startBrowser,
} from './lib.mjs';

const shot = screenshotter('layout');

describe('layout at desktop and phone widths', () => {
  let browser;
  let page;
  let admin;
  let derivedTicket;

  before(async () => {
    admin = await registerViaApi('Layout Corp');
    const auth = { token: admin.token };
    const meraki = await apiCall('POST', '/api/integrations', {
      ...auth, body: { provider: 'MERAKI', name: 'Branch offices with a rather long integration name', mode: 'simulated', credentials: { api_key: 'k' } },
    });
    await apiCall('POST', '/api/integrations', {
      ...auth, body: { provider: 'WAZUH', name: 'Wazuh manager', mode: 'simulated', settings: { base_url: 'https://wazuh.layout-corp.example:55000' }, credentials: { username: 'wazuh', password: 'p' } },
    });
    // A ticket handed to a human, with a long reason, for the detail view.
    const created = await apiCall('POST', '/api/tickets', {
      ...auth,
      body: {
        subject: 'Quarantine 198.51.100.23 across every branch network after repeated SSH brute force',
        description: 'Seen on 14 hosts.',
        actions: [{ integration_id: meraki.data.id, action: 'block_ip', params: { network_id: 'N_24329156', ip: '198.51.100.23' } }],
      },
    });
    derivedTicket = created.data;
    await apiCall('POST', '/api/tickets', { ...auth, body: { subject: 'Manual follow-up: call the ISP abuse desk' } });
    browser = await startBrowser();
    page = await openPage(browser.context);
    await logIn(page, admin.username, admin.password);
  });

  after(async () => {
    await browser?.close();
  });

  for (const [label, viewport] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    test(`every tab fits at ${viewport.width} px`, async () => {
      await page.setViewportSize(viewport);
      const check = async (name) => {
        assert.equal(await horizontalOverflow(page), 0, `${name} overflows sideways at ${viewport.width} px`);
        await shot(page, `${label}-${name}`);
      };

      await openTab(page, 'Tickets');
      await page.locator('#tickets-table tr', { hasText: 'Manual follow-up' }).waitFor();
      await check('tickets');
      await page.locator('#tickets-new').click();
      await page.locator('#action-rows .action-row').waitFor();
      await check('ticket-form');
      await page.goto(new URL(`#/tickets/${derivedTicket.id}`, page.url()).href);
      await page.locator('#ticket-detail .ticket-head .badge', { hasText: /EXECUTED|PENDING/ }).waitFor();
      await check('ticket-detail');

      await openTab(page, 'Integrations');
      await page.locator('#integrations-table tr', { hasText: 'Wazuh manager' }).waitFor();
      await page.locator('#integrations-new').click();
      await page.locator('#integration-form [name=provider]').selectOption('SPLUNK');
      await page.locator('#integration-form [name=credential_kind]').selectOption('username,password');
      await check('integrations');
      await page.locator('#integration-form [data-cancel]').click();

      await openTab(page, 'Users');
      await page.locator('#users-table tr', { hasText: admin.username }).waitFor();
      await page.locator('#users-new').click();
      await check('users');
      await page.locator('#user-form [data-cancel]').click();

      await openTab(page, 'Audit');
      await page.locator('#audit-table').getByText('ticket.created').first().waitFor();
      await check('audit');

      await openTab(page, 'Queue');
      await page.locator('#queue-problem:not([hidden]), #jobs-table table, #jobs-table .empty').first().waitFor();
      await check('queue');

      await page.locator('#logout').click();
      await page.locator('#login-form').waitFor();
      await check('signed-out');
      await logIn(page, admin.username, admin.password);
    });
  }

  test('raised no script errors', () => {
    assert.deepEqual(page.errors.map(String), []);
  });
});
