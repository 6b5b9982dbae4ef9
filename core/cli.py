def main() -> None: print("cli ok")
