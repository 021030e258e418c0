/**
 * One small error hierarchy per boundary. Each maps to exactly one exit code
 * (see cli/main.ts) and, where it crosses the wire, to one wire error code.
 * Handle with `instanceof`, never by matching messages.
 */

/** Bad capsul.yaml or bad command-line usage. Exit code 2. `path` names the key. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(message: string, readonly path?: string, options?: { cause?: unknown }) {
    super(path ? `${path}: ${message}` : message, options);
  }
}

/** The peer broke the wire protocol (yamux framing, control messages, visitor header). */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** Authentication or authorization failed (certificates, tokens, grants). */
export class AuthError extends Error {
  override name = "AuthError";
}

/** A runtime failure the operator should see as one line. Exit code 1. */
export class RuntimeError extends Error {
  override name = "RuntimeError";
}
