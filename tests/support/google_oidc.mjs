// A Google-shaped OpenID provider on a local port: the certified `oidc-provider`, configured with
// Google's claims (`sub`, `email`, `email_verified`, `name`, `picture`, in the ID token) and PKCE
// required. Started by tests/support/google.py, which passes its configuration as JSON:
//   {"port": 0, "clients": [{"client_id", "client_secret", "redirect_uris"}, ...]}
// and reads the one line it prints when listening: {"issuer": "http://127.0.0.1:PORT"}.
//
// Signing in is driven by the test, with no devInteractions:
// - POST /interaction/:uid/login (form: sub, email, email_verified, name, picture, code_ttl) names
//   the account that signs in, with its claims, and grants the requested scopes; the browser is
//   sent on to the provider's resume URL, and from there to the client's redirect URI with a code.
//   `code_ttl` (seconds) sets how long that account's next authorization codes live.
// - GET /test/grant-errors lists the token endpoint's refusals so far ({error, detail}), so a
//   test can tell which check refused an exchange (e.g. "PKCE verification failed").
// - POST /test/substitute-id-token (form: id_token) makes the next token response carry that
//   ID token instead of its own: a provider answering with a token minted for another client.
import http from "node:http";
import Provider from "oidc-provider";

const config = JSON.parse(process.argv[2]);
const accounts = new Map(); // sub -> claims
const codeTtls = new Map(); // sub -> seconds
const grantErrors = [];
let substituteIdToken = null;

const server = http.createServer();
await new Promise((resolve) => server.listen(config.port, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients.map((client) => ({
    ...client,
    grant_types: ["authorization_code"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
  })),
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "picture"],
  },
  // Google puts the scopes' claims in the ID token of the code flow.
  conformIdTokenClaims: false,
  findAccount: (ctx, sub) => {
    const claims = accounts.get(sub);
    return claims && { accountId: sub, claims: () => ({ sub, ...claims }) };
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ["pingvas-tests-only"] },
  ttl: {
    AuthorizationCode: (ctx, code) => codeTtls.get(code.accountId) ?? 60,
    AccessToken: 3600,
    IdToken: 3600,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
  },
  renderError: (ctx, out) => {
    ctx.type = "application/json";
    ctx.body = out;
  },
});

provider.on("grant.error", (ctx, error) => {
  grantErrors.push({ error: error.error, detail: error.error_detail ?? error.error_description });
});

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === "/token" && substituteIdToken && ctx.body?.id_token) {
    ctx.body = { ...ctx.body, id_token: substituteIdToken };
    substituteIdToken = null;
  }
});

async function form(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

function json(res, status, value) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
}

const callback = provider.callback();
server.on("request", async (req, res) => {
  try {
    const path = new URL(req.url, issuer).pathname;
    const login = path.match(/^\/interaction\/([^/]+)\/login$/);
    if (login && req.method === "POST") {
      const fields = await form(req);
      const details = await provider.interactionDetails(req, res);
      accounts.set(fields.sub, {
        email: fields.email,
        email_verified: fields.email_verified === "true",
        name: fields.name,
        picture: fields.picture,
      });
      if (fields.code_ttl) codeTtls.set(fields.sub, Number(fields.code_ttl));
      const grant = new provider.Grant({ accountId: fields.sub, clientId: details.params.client_id });
      grant.addOIDCScope(details.params.scope);
      const grantId = await grant.save();
      await provider.interactionFinished(
        req,
        res,
        { login: { accountId: fields.sub }, consent: { grantId } },
        { mergeWithLastSubmission: false },
      );
      return;
    }
    if (path === "/test/grant-errors" && req.method === "GET") return json(res, 200, grantErrors);
    if (path === "/test/substitute-id-token" && req.method === "POST") {
      substituteIdToken = (await form(req)).id_token;
      return json(res, 200, {});
    }
    callback(req, res);
  } catch (error) {
    json(res, 500, { error: String(error) });
  }
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
