/** The workspace's one error paragraph: announced to screen readers (role "alert"); nothing when there is
 * no error to show. */
export default function ErrorMessage({ children }) {
  if (children === null || children === undefined || children === false || children === "") return null;
  return (
    <p className="message message-error" role="alert">
      {children}
    </p>
  );
}
