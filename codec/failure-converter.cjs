// With payload encryption on, failure messages and stack traces (which can quote datasets, paths and
// job output) move into the failure's encoded attributes, which the payload codec encrypts.
// Temporal loads this file by path: require()d by workers and clients outside the workflow sandbox,
// bundled into it for workflow code. Hence CommonJS, which both can load without a TypeScript loader.
'use strict';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { DefaultFailureConverter } = require('@temporalio/common');

exports.failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
