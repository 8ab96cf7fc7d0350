// The console's screens and its small router (the History API; the static-file server answers
// every page path with index.html).
import { useCallback, useEffect, useState } from "react";
import { hasAccessToken } from "./api";
import { Account } from "./screens/Account";
import { Create } from "./screens/Create";
import { Gallery } from "./screens/Gallery";
import { Live } from "./screens/Live";
import { OAuthCallback, SignIn } from "./screens/SignIn";
import { logout, resumeSession } from "./session";

export type Navigate = (path: string) => void;

export function App() {
  const [path, setPath] = useState(location.pathname + location.search);
  const [signedIn, setSignedIn] = useState<boolean | undefined>(undefined);

  const navigate = useCallback<Navigate>((to) => {
    history.pushState(null, "", to);
    setPath(to);
  }, []);

  useEffect(() => {
    const onPop = () => setPath(location.pathname + location.search);
    addEventListener("popstate", onPop);
    return () => removeEventListener("popstate", onPop);
  }, []);

  useEffect(() => {
    if (location.pathname === "/oauth/callback") {
      setSignedIn(false);
      return;
    }
    // A reload keeps no token in memory: the refresh cookie, if any, signs in again.
    void resumeSession().then(setSignedIn);
  }, []);

  const onSignedIn = useCallback(() => {
    setSignedIn(true);
    if (location.pathname === "/" || location.pathname.startsWith("/oauth/")) navigate("/create");
  }, [navigate]);

  const pathname = path.split("?")[0];
  if (pathname === "/oauth/callback" && !hasAccessToken()) {
    return <OAuthCallback onSignedIn={onSignedIn} />;
  }
  if (signedIn === undefined) return <main aria-busy="true">Loading…</main>;
  if (!signedIn) return <SignIn onSignedIn={onSignedIn} />;

  const link = (to: string, label: string) => (
    <a href={to} onClick={(e) => (e.preventDefault(), navigate(to))}>
      {label}
    </a>
  );
  let screen;
  const live = pathname.match(/^\/generations\/([0-9a-f-]+)$/);
  if (live) screen = <Live key={live[1]} generationId={live[1]} navigate={navigate} />;
  else if (pathname === "/gallery") screen = <Gallery />;
  else if (pathname === "/account") screen = <Account />;
  else screen = <Create navigate={navigate} />;
  return (
    <>
      <header>
        <span className="brand">Pingvas</span>
        {link("/create", "Create")}
        {link("/gallery", "Gallery")}
        {link("/account", "Account")}
        <button onClick={() => void logout().then(() => (setSignedIn(false), navigate("/")))}>Sign out</button>
      </header>
      <main>{screen}</main>
    </>
  );
}
