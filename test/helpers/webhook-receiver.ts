/**
 * A local webhook receiver for the notification tests: node:http on 127.0.0.1 (a free port), which
 * records every request and answers each path as told: 200, a status, or a few failures first.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ReceivedRequest {
  path: string;
  eventId: string | undefined;
  event: string | undefined;
  contentType: string | undefined;
  body: Record<string, unknown>;
  /** What the receiver answered. */
  status: number;
}

export interface WebhookReceiver {
  /** `http://127.0.0.1:<port><path>` */
  url(path: string): string;
  requests: ReceivedRequest[];
  /** Requests to `path` (optionally only those answered `status`). */
  to(path: string, status?: number): ReceivedRequest[];
  close(): Promise<void>;
}

/** How a path answers: `{ failFirst: 2 }` answers 500 twice, then 200; `{ status: 500 }` always 500. Default 200. */
export type Behaviour = { status: number } | { failFirst: number; failStatus?: number };

export async function startWebhookReceiver(behaviours: Record<string, Behaviour> = {}): Promise<WebhookReceiver> {
  const requests: ReceivedRequest[] = [];
  const seen = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '/';
      const n = (seen.get(path) ?? 0) + 1;
      seen.set(path, n);
      const b = behaviours[path];
      const status = !b ? 200 : 'status' in b ? b.status : n <= b.failFirst ? (b.failStatus ?? 500) : 200;
      let body: Record<string, unknown> = {};
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
      } catch {
        body = { unparsable: Buffer.concat(chunks).toString('utf8') };
      }
      const header = (name: string) => (typeof req.headers[name] === 'string' ? (req.headers[name] as string) : undefined);
      requests.push({ path, eventId: header('x-refinery-event-id'), event: header('x-refinery-event'), contentType: header('content-type'), body, status });
      res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 200 ? 'ok' : 'no');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: (path) => `http://127.0.0.1:${port}${path}`,
    requests,
    to: (path, status) => requests.filter((r) => r.path === path && (status === undefined || r.status === status)),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections(); // fetch keeps connections alive
      }),
  };
}
