import { useEffect, useRef, useState } from "react";
import { ErrorNotice, fieldErrors } from "../errors";
import { beginOAuth, completeOAuth, devLogin } from "../session";

// Dev login exists on a laptop's mesh only (the user service refuses it elsewhere).
const onLaptop = ["localhost", "127.0.0.1", "[::1]"].includes(location.hostname);

export function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [email, setEmail] = useState("dev@pingvas.local");
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const run = (action: () => Promise<void>) => {
    setBusy(true);
    setError(undefined);
    action().then(onSignedIn, (e) => (setError(e), setBusy(false)));
  };
  const fields = fieldErrors(error);
  return (
    <main className="stack" style={{ maxWidth: 420 }}>
      <h1>Sign in to Pingvas</h1>
      <button onClick={() => run(() => beginOAuth("google"))} disabled={busy}>
        Sign in with Google
      </button>
      <button onClick={() => run(() => beginOAuth("discord"))} disabled={busy}>
        Sign in with Discord
      </button>
      {onLaptop && (
        <form
          className="stack"
          aria-label="Dev login"
          onSubmit={(e) => (e.preventDefault(), run(() => devLogin(email)))}
        >
          <label>
            Email (dev login)
            <input name="email" type="email" value={email} onChange={(e) => setEmail(e.target.value)} />
          </label>
          {fields.email && <span className="field-error">{fields.email}</span>}
          <button type="submit" className="secondary" disabled={busy}>
            Dev login
          </button>
        </form>
      )}
      <ErrorNotice error={error} navigate={() => undefined} />
    </main>
  );
}

export function OAuthCallback({ onSignedIn }: { onSignedIn: () => void }) {
  const [error, setError] = useState<unknown>();
  const started = useRef(false);
  useEffect(() => {
    if (started.current) return; // once, also under StrictMode's double effects: a code works once
    started.current = true;
    completeOAuth(new URLSearchParams(location.search)).then(onSignedIn, setError);
  }, [onSignedIn]);
  return (
    <main className="stack">
      {error ? (
        <>
          <ErrorNotice error={error} navigate={() => undefined} />
          <a href="/">Back to sign in</a>
        </>
      ) : (
        <p>Signing in…</p>
      )}
    </main>
  );
}
