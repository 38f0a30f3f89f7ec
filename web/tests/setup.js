// Unmount what each test rendered (Testing Library cleans up by itself only when test globals are on).
import { cleanup } from "@testing-library/react";
import { afterEach } from "vitest";

afterEach(cleanup);
