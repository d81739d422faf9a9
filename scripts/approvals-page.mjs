// Browser test of the approvals page, in headless Chromium (puppeteer-core).
// Usage: node approvals-page.mjs ADMIN_URL CREDENTIAL ACTION [REASON]
//   ACTION: approve | deny. Signs in with CREDENTIAL, waits for a pending
//   request, checks what the page shows, clicks the button, prints JSON.
import puppeteer from 'puppeteer-core';

const [adminUrl, credential, action, reason] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await puppeteer.launch({
  executablePath, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
});
const out = {};
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => { out.pageErrors = [...(out.pageErrors || []), String(e)]; });
  await page.goto(`${adminUrl}/approvals`, { waitUntil: 'load' });
  out.title = await page.title();
  await page.type('#credential', credential);
  await page.click('#signin');
  await page.waitForSelector('.req', { timeout: 15000 });
  out.requests = await page.$$eval('.req', (els) => els.map((e) => ({
    id: e.dataset.id,
    text: e.innerText,
    statement: e.querySelector('.statement')?.textContent,
  })));
  if (reason) await page.type('.req .reason', reason);
  await page.click(`.req button.${action}`);
  await page.waitForFunction(() => /is now (approved|denied|pending)/.test(document.getElementById('status').textContent), { timeout: 15000 });
  out.status = await page.$eval('#status', (e) => e.textContent);
  out.credentialInDom = (await page.content()).includes(credential);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));
