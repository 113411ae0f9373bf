// Shared by the browser tests: starting Chromium, screenshots, page helpers.
// run.sh sets TXDX_BASE_URL (the api serving basic_frontend), TXDX_ARTIFACTS
// and CHROMIUM_PATH.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { chromium } from 'playwright-core';

export const BASE_URL = process.env.TXDX_BASE_URL || 'http://127.0.0.1:8080';
const ARTIFACTS = process.env.TXDX_ARTIFACTS || join(process.cwd(), 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const DESKTOP = { width: 1280, height: 900 };
export const PHONE = { width: 375, height: 812 };

/** A suffix that keeps names unique across runs against a shared database. */
export const RUN_ID = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e4).toString(36)}`;

/**
 * Starts Debian's Chromium headless with a fresh profile directory.
 * Returns {context, close}; pages record uncaught script errors in `page.errors`.
 */
export async function startBrowser() {
  const profile = mkdtempSync(join(tmpdir(), 'txdx-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: DESKTOP,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  context.setDefaultTimeout(15_000);
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

/**
 * A new tab on the app. confirm() dialogs are accepted; prompt() dialogs get
 * the next string pushed on `page.promptAnswers`. Uncaught script errors
 * collect in `page.errors`. `fakeClock` installs Playwright's clock first.
 */
export async function openPage(context, { viewport = DESKTOP, path = '/', fakeClock = false } = {}) {
  const page = await context.newPage();
  page.errors = [];
  page.promptAnswers = [];
  page.on('pageerror', (err) => page.errors.push(err));
  page.on('dialog', (dialog) => dialog.accept(dialog.type() === 'prompt' ? page.promptAnswers.shift() ?? '' : undefined));
  if (fakeClock) await page.clock.install();
  await page.setViewportSize(viewport);
  await page.goto(new URL(path, BASE_URL).href);
  return page;
}

/** Screenshot helper numbering the files of one test file: artifacts/browser/<prefix>-NN-<name>.png. */
export function screenshotter(prefix) {
  mkdirSync(ARTIFACTS, { recursive: true });
  let n = 0;
  return async (page, name, { fullPage = true } = {}) => {
    n += 1;
    const file = join(ARTIFACTS, `${prefix}-${String(n).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path: file, fullPage });
    return file;
  };
}

/** Registers a company through the page's form; resolves once signed in. */
export async function registerCompany(page, { company, username, email, password }) {
  const form = page.locator('#register-form');
  await form.locator('[name=company_name]').fill(company);
  await form.locator('[name=username]').fill(username);
  await form.locator('[name=email]').fill(email);
  await form.locator('[name=password]').fill(password);
  await form.locator('button[type=submit]').click();
  await page.locator('#who').getByText(username).waitFor();
}

export async function logIn(page, username, password) {
  const form = page.locator('#login-form');
  await form.locator('[name=username]').fill(username);
  await form.locator('[name=password]').fill(password);
  await form.locator('button[type=submit]').click();
  await page.locator('#who').getByText(username).waitFor();
}

export async function openTab(page, name) {
  await page.locator('#tabs').getByRole('link', { name, exact: true }).click();
  await page.locator(`#tab-${name.toLowerCase()}`).waitFor();
}

/**
 * Creates an integration through the Integrations tab.
 * credentials: {key: value} of one accepted combination; settings: {base_url, …}.
 */
export async function createIntegration(page, { provider, name, mode = 'simulated', credentials = {}, settings = {} }) {
  await openTab(page, 'Integrations');
  await page.locator('#integrations-new').click();
  const form = page.locator('#integration-form');
  await form.locator('[name=provider]').selectOption(provider);
  await form.locator('[name=name]').fill(name);
  await form.locator(`[name=mode][value=${mode}]`).check();
  for (const [key, value] of Object.entries(settings)) await form.locator(`[name=${key}]`).fill(String(value));
  const kind = Object.keys(credentials).join(',');
  if (kind) await form.locator('[name=credential_kind]').selectOption(kind);
  for (const [key, value] of Object.entries(credentials)) await form.locator(`[name=cred_${key}]`).fill(value);
  await form.locator('button[type=submit]').click();
  await page.locator('#integrations-table tr', { hasText: name }).waitFor();
}

/** Plain API call from the test process (for set-up and checks the page does not need). */
export async function apiCall(method, path, { token, body } = {}) {
  const res = await fetch(new URL(path, BASE_URL), {
    method,
    headers: {
      ...(body ? { 'Content-Type': 'application/json' } : {}),
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return { status: res.status, data };
}

/** A TCP port on 127.0.0.1 that nothing listens on (bound, then released). */
export function closedPort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * How far the page, or any visible table inside its scroll box, sticks out
 * sideways, in px (0 when everything fits).
 */
export function horizontalOverflow(page) {
  return page.evaluate(() => {
    const over = (el) => el.scrollWidth - el.clientWidth;
    const tables = [...document.querySelectorAll('.table-wrap')].filter((el) => el.offsetParent !== null);
    return Math.max(over(document.documentElement), ...tables.map(over));
  });
}

/** Registers a company through the API (set-up that is not under test); returns its ADMIN and token. */
export async function registerViaApi(label) {
  const admin = {
    company: `${label} ${RUN_ID}`,
    username: `${label.toLowerCase().replace(/[^a-z0-9]+/g, '-')}-${RUN_ID}`,
    email: `admin-${RUN_ID}@${label.toLowerCase().replace(/[^a-z0-9]+/g, '')}.example`,
    password: 'correct horse battery staple',
  };
  const res = await apiCall('POST', '/api/auth/register', {
    body: { company_name: admin.company, username: admin.username, email: admin.email, password: admin.password },
  });
  if (res.status !== 201) throw new Error(`register answered ${res.status}: ${JSON.stringify(res.data)}`);
  return { ...admin, token: res.data.tokens.access_token };
}
