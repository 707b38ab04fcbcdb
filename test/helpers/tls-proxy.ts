/**
 * A TLS front for the plaintext dev server, as a production Temporal frontend would be: it
 * terminates TLS (HTTP/2 by ALPN), optionally requires a client certificate signed by its CA
 * (mTLS), and passes the bytes on to the dev server's gRPC port. Certificates come from openssl.
 */
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createServer, type Server } from 'node:tls';
import { execa } from 'execa';

export interface TestPki {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A client certificate from another CA: the proxy must refuse it. */
  rogueCert: string;
  rogueKey: string;
  serverName: string;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await execa('openssl', args, { cwd });
}

/** A CA, a server certificate for `serverName`, a client certificate it signed, and a rogue one. */
export async function makeTestPki(serverName = 'temporal.refinery.test'): Promise<TestPki> {
  const dir = await mkdtemp(path.join(tmpdir(), 'refinery-pki-'));
  const days = ['-days', '2'];
  const selfSignedCa = (name: string) => openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-subj', `/CN=${name}`, ...days], dir);
  const signed = async (name: string, ca: string, ext: string) => {
    await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], dir);
    await openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, ...days, '-extfile', ext], dir);
  };
  await selfSignedCa('ca');
  await selfSignedCa('rogue-ca');
  await writeFile(path.join(dir, 'server.ext'), `subjectAltName=DNS:${serverName}\nextendedKeyUsage=serverAuth\n`);
  await writeFile(path.join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  await signed('server', 'ca', 'server.ext');
  await signed('client', 'ca', 'client.ext');
  await signed('rogue', 'rogue-ca', 'client.ext');
  const p = (f: string) => path.join(dir, f);
  return { dir, ca: p('ca.crt'), serverCert: p('server.crt'), serverKey: p('server.key'), clientCert: p('client.crt'), clientKey: p('client.key'), rogueCert: p('rogue.crt'), rogueKey: p('rogue.key'), serverName };
}

export interface TlsProxy {
  address: string;
  /** Connections refused at the handshake (no or a wrong client certificate). */
  refused: number;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1 (a free port) and forwards to `target` ("host:port"). */
export async function startTlsProxy(o: { target: string; pki: TestPki; requireClientCert: boolean }): Promise<TlsProxy> {
  const [host, port] = [o.target.slice(0, o.target.lastIndexOf(':')), Number(o.target.slice(o.target.lastIndexOf(':') + 1))];
  const state = { refused: 0 };
  const server: Server = createServer(
    {
      key: await readFile(o.pki.serverKey),
      cert: await readFile(o.pki.serverCert),
      ca: await readFile(o.pki.ca),
      requestCert: o.requireClientCert,
      rejectUnauthorized: o.requireClientCert,
      ALPNProtocols: ['h2'],
    },
    (socket) => {
      const upstream = connect(port, host);
      socket.pipe(upstream).pipe(socket);
      const end = () => {
        socket.destroy();
        upstream.destroy();
      };
      socket.on('error', end);
      upstream.on('error', end);
      socket.on('close', end);
      upstream.on('close', end);
    },
  );
  server.on('tlsClientError', () => state.refused++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: listening } = server.address() as AddressInfo;
  return {
    address: `127.0.0.1:${listening}`,
    get refused() {
      return state.refused;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
