// Sign-in state. The access token is kept in memory (api.ts); the refresh token is an
// HttpOnly, Secure, SameSite=Strict cookie that the user service sets, scoped to the session
// RPCs' path, so a reload signs in again through RefreshSession without script ever seeing it.
import { OAuthProvider } from "@pingvas/sdk/gen/pingvas/user/v1/user_resources_pb.js";
import { client, setAccessToken } from "./api";

// Asks the user service to keep the refresh token in the cookie instead of the response body.
const COOKIE_SESSION = { "pingvas-session": "cookie" };
const OAUTH_STATE_KEY = "pingvas.oauth";

export const oauthRedirectUri = (): string => `${location.origin}/oauth/callback`;

export async function devLogin(email: string): Promise<void> {
  const reply = await client.call((options) =>
    client.userService.devLogin({ email }, { ...options, headers: COOKIE_SESSION }),
  );
  setAccessToken(reply.accessToken);
}

/** A new access token from the refresh cookie; false when there is no session to resume. */
export async function resumeSession(): Promise<boolean> {
  try {
    const reply = await client.call((options) =>
      client.userService.refreshSession({}, { ...options, headers: COOKIE_SESSION }),
    );
    setAccessToken(reply.accessToken);
    return true;
  } catch {
    return false;
  }
}

export async function logout(): Promise<void> {
  await client.call((options) => client.userService.logout({}, { ...options, headers: COOKIE_SESSION })).catch(() => undefined);
  setAccessToken(undefined);
}

/**
 * Sends the browser to the provider. The attempt's state is kept in this tab's sessionStorage,
 * so a callback carrying a state this browser did not begin (a login CSRF) is refused here,
 * before the user service would also refuse a state it did not issue.
 */
export async function beginOAuth(provider: "google" | "discord"): Promise<void> {
  const reply = await client.call((options) =>
    client.userService.beginOAuthLogin(
      {
        provider: provider === "google" ? OAuthProvider.GOOGLE : OAuthProvider.DISCORD,
        redirectUri: oauthRedirectUri(),
      },
      options,
    ),
  );
  sessionStorage.setItem(OAUTH_STATE_KEY, JSON.stringify({ state: reply.state, provider }));
  location.assign(reply.authorizationUrl);
}

export async function completeOAuth(query: URLSearchParams): Promise<void> {
  const begun = JSON.parse(sessionStorage.getItem(OAUTH_STATE_KEY) ?? "null") as { state: string; provider: string } | null;
  sessionStorage.removeItem(OAUTH_STATE_KEY);
  if (!begun || begun.state !== query.get("state")) {
    throw new Error("This sign-in was not started in this browser; please sign in again.");
  }
  const reply = await client.call((options) =>
    client.userService.completeOAuthLogin(
      {
        provider: begun.provider === "google" ? OAuthProvider.GOOGLE : OAuthProvider.DISCORD,
        code: query.get("code") ?? "",
        state: begun.state,
      },
      { ...options, headers: COOKIE_SESSION },
    ),
  );
  setAccessToken(reply.accessToken);
}
