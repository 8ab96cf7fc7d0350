// The account: plan and credits (with what is held by running generations), the latest ledger
// entries, subscribing or upgrading through Lemon Squeezy's checkout, and API keys.
import { useCallback, useEffect, useState } from "react";
import { CreditEntryKind, Plan } from "@pingvas/sdk/gen/pingvas/billing/v1/billing_resources_pb.js";
import type { CreditEntry, PlanOffer } from "@pingvas/sdk/gen/pingvas/billing/v1/billing_resources_pb.js";
import type { ApiKey } from "@pingvas/sdk/gen/pingvas/user/v1/api_key_resources_pb.js";
import type { User } from "@pingvas/sdk/gen/pingvas/user/v1/user_resources_pb.js";
import { client } from "../api";
import { ErrorNotice, fieldErrors } from "../errors";

const planName = (plan: Plan) => Plan[plan].toLowerCase();

export function Account() {
  const [user, setUser] = useState<User>();
  const [entries, setEntries] = useState<CreditEntry[]>([]);
  const [plans, setPlans] = useState<PlanOffer[]>([]);
  const [subscribed, setSubscribed] = useState(false);
  const [error, setError] = useState<unknown>();

  useEffect(() => {
    const load = async () => {
      setUser(await client.call((o) => client.userService.getUser({ name: "users/me" }, o)));
      setEntries((await client.call((o) => client.billingService.listCreditEntries({ pageSize: 10 }, o))).entries);
      setPlans((await client.call((o) => client.billingService.listPlans({}, o))).plans);
      setSubscribed(!!(await client.call((o) => client.billingService.getSubscription({}, o))).subscription);
    };
    load().catch(setError);
  }, []);

  const choose = (plan: Plan) => {
    const action = subscribed
      ? client.call((o) => client.billingService.upgradeSubscription({ plan }, o)).then(() => location.reload())
      : client.call((o) => client.billingService.createCheckout({ plan }, o)).then((r) => location.assign(r.checkoutUrl));
    action.catch(setError);
  };

  return (
    <div className="stack">
      <h1>Account</h1>
      <ErrorNotice error={error} navigate={() => undefined} />
      {user && (
        <section>
          <p>
            {user.email} · plan <strong data-testid="plan">{planName(user.plan)}</strong>
          </p>
          <p data-testid="credits">
            Credits: {String(user.credits?.available ?? 0n)} available, {String(user.credits?.held ?? 0n)} held, of{" "}
            {String(user.credits?.balance ?? 0n)}
          </p>
        </section>
      )}
      <section>
        <h2>Recent credit entries</h2>
        <table>
          <tbody>
            {entries.map((entry) => (
              <tr key={entry.id}>
                <td>{entry.createTime ? new Date(Number(entry.createTime.seconds) * 1000).toLocaleString() : ""}</td>
                <td>{CreditEntryKind[entry.kind].toLowerCase()}</td>
                <td>{String(entry.amount)}</td>
                <td>{entry.reference}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
      <section>
        <h2>{subscribed ? "Upgrade" : "Subscribe"}</h2>
        <div className="row">
          {plans
            .filter((offer) => offer.priceUsd > 0n && offer.plan !== user?.plan)
            .map((offer) => (
              <button key={offer.plan} onClick={() => choose(offer.plan)}>
                {planName(offer.plan)}: ${String(offer.priceUsd)}/month, {String(offer.monthlyCredits)} credits
              </button>
            ))}
        </div>
      </section>
      <ApiKeys />
    </div>
  );
}

function ApiKeys() {
  const [keys, setKeys] = useState<ApiKey[]>([]);
  const [secret, setSecret] = useState<string>();
  const [error, setError] = useState<unknown>();
  const refresh = useCallback(() => {
    client.call((o) => client.apiKeyService.listApiKeys({ pageSize: 100 }, o)).then((r) => setKeys(r.apiKeys), setError);
  }, []);
  useEffect(refresh, [refresh]);
  const fields = fieldErrors(error);

  const createKey = (form: HTMLFormElement) => {
    const data = new FormData(form);
    const scopes = ["read", "generate"].filter((scope) => data.get(scope) === "on");
    setError(undefined);
    client
      .call((o) => client.apiKeyService.createApiKey({ displayName: String(data.get("displayName") ?? ""), scopes }, o))
      .then((created) => {
        setSecret(created.secret);
        form.reset();
        refresh();
      }, setError);
  };
  const revoke = (key: ApiKey) => {
    client.call((o) => client.apiKeyService.deleteApiKey({ name: key.name }, o)).then(refresh, setError);
  };

  return (
    <section className="stack">
      <h2>API keys</h2>
      <form className="row" aria-label="New API key" onSubmit={(e) => (e.preventDefault(), createKey(e.currentTarget))}>
        <label>
          Name
          <input name="displayName" />
          {fields.display_name && <span className="field-error">{fields.display_name}</span>}
        </label>
        <label>
          <span>
            <input type="checkbox" name="read" defaultChecked /> read
          </span>
          <span>
            <input type="checkbox" name="generate" defaultChecked /> generate
          </span>
          {fields.scopes && <span className="field-error">{fields.scopes}</span>}
        </label>
        <button type="submit">Create key</button>
      </form>
      {secret && (
        <div className="notice" data-testid="new-secret">
          Copy this key now; it is not shown again: <code className="secret">{secret}</code>
        </div>
      )}
      <ErrorNotice error={error} navigate={() => undefined} />
      <table>
        <tbody>
          {keys.map((key) => (
            <tr key={key.name} data-key-name={key.name}>
              <td>{key.displayName}</td>
              <td>{key.prefix}…</td>
              <td>{key.scopes.join(", ")}</td>
              <td>
                <button className="danger" onClick={() => revoke(key)}>
                  Revoke
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
