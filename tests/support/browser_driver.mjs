// A real browser for the console's tests: Debian's chromium, headless, driven by playwright-core
// (web/node_modules). tests/support/browser.py starts it and sends one JSON command per line on
// stdin; each gets one JSON line back on stdout: {"ok": true, "value": ...} or {"ok": false,
// "error": "..."}. Waiting is Playwright's (for a selector, a state, a navigation), never a sleep.
// The console messages and page errors of the current page are kept, so a test can assert that
// the Content-Security-Policy refused nothing.
import { createInterface } from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(new URL("../../web/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.PINGVAS_CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
let context;
let page;
let messages = [];

async function newContext({ width = 1280, height = 800 } = {}) {
  if (context) await context.close();
  context = await browser.newContext({ viewport: { width, height } });
  context.setDefaultTimeout(Number(process.env.PINGVAS_BROWSER_TIMEOUT_MS ?? 60_000));
  page = await context.newPage();
  messages = [];
  page.on("console", (message) => messages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => messages.push(`pageerror: ${error.message}`));
}

const commands = {
  newContext: (args) => newContext(args),
  goto: ({ url }) => page.goto(url).then(() => page.url()),
  reload: () => page.reload().then(() => page.url()),
  url: () => page.url(),
  click: ({ selector }) => page.locator(selector).first().click(),
  fill: ({ selector, value }) => page.locator(selector).first().fill(value),
  select: ({ selector, value }) => page.locator(selector).first().selectOption(value),
  check: ({ selector }) => page.locator(selector).first().check(),
  press: ({ selector, key }) => page.locator(selector).first().press(key),
  waitFor: ({ selector, state = "visible" }) => page.locator(selector).first().waitFor({ state }),
  waitForUrl: ({ prefix }) => page.waitForURL((url) => url.href.startsWith(prefix)),
  // Waits until `expression` (a function body over `arg`) is truthy in the page; returns its value.
  waitForFunction: ({ expression, arg }) =>
    page.waitForFunction(new Function("arg", expression), arg).then((handle) => handle.jsonValue()),
  evaluate: ({ expression, arg }) => page.evaluate(new Function("arg", expression), arg),
  text: ({ selector }) => page.locator(selector).first().innerText(),
  count: ({ selector }) => page.locator(selector).count(),
  attribute: ({ selector, name }) => page.locator(selector).first().getAttribute(name),
  scrollIntoView: ({ selector }) => page.locator(selector).first().scrollIntoViewIfNeeded(),
  screenshot: ({ path }) => page.screenshot({ path, fullPage: true }).then(() => path),
  messages: () => messages,
  cookies: () => context.cookies(),
};

await newContext();
process.stdout.write(`${JSON.stringify({ ok: true, value: "ready" })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const { command, args } = JSON.parse(line);
  let reply;
  try {
    reply = { ok: true, value: (await commands[command](args ?? {})) ?? null };
  } catch (error) {
    reply = { ok: false, error: String(error?.stack ?? error) };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}
await browser.close();
