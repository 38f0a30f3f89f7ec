// Unmount what each test rendered (Testing Library cleans up by itself only when test globals are on).
import { cleanup, configure } from "@testing-library/react";
import { afterEach } from "vitest";

afterEach(cleanup);
// waitFor/findBy* give up after 1 s by default: too short when the machine is busy.
configure({ asyncUtilTimeout: 10000 });
