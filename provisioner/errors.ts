import { RuntimeError } from "../lib/errors.js";

/**
 * Every failure the provisioner API reports. `code` is stable (clients and
 * tests match on it), `status` is the HTTP status, the message is for people.
 * Mapped to JSON in exactly one place: api.ts `errorResponse()`.
 */
export class ProvisionerError extends RuntimeError {
  override name = "ProvisionerError";
  constructor(readonly code: string, message: string, readonly status: number, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export const badRequest = (code: string, msg: string): ProvisionerError => new ProvisionerError(code, msg, 400);
export const notFound = (code: string, msg: string): ProvisionerError => new ProvisionerError(code, msg, 404);
export const conflict = (code: string, msg: string): ProvisionerError => new ProvisionerError(code, msg, 409);
export const internal = (code: string, msg: string, cause?: unknown): ProvisionerError =>
  new ProvisionerError(code, msg, 500, { cause });
