/** A workflow history as text with its payloads decoded: they come base64-encoded, so a plain search would never find a secret in them. */
export function historyText(history: unknown): string {
  return JSON.stringify(history).replace(/"data":"([A-Za-z0-9+/=]*)"/g, (_m, b64: string) => `"data":${JSON.stringify(Buffer.from(b64, 'base64').toString('utf8'))}`);
}
